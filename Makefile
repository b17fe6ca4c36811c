# The two commands of the README. Both install what they need first (scripts/setup.sh).
.PHONY: demo test setup

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/rlhf demo $(ARGS)

test: setup
	.venv/bin/pytest -q $(ARGS)
