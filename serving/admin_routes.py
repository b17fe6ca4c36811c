"""Operator routes under /admin (versions, status, retrain, deploy, rollback).

Owned by the worker/ops work; serving/app.py only includes ``router``.
"""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin", tags=["admin"])
