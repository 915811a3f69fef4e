"""Flamenco-compatible job compiler: runs job-type scripts (JavaScript) in V8.

Typical use::

    registry = JobTypeRegistry.with_builtins(user_dir)
    await registry.refresh_async()
    script = registry.get("simple-blender-render")
    check_submitted_etag(script.etag, submitted_etag)        # 412 on mismatch
    problems = validate_settings(script.job_type, settings)  # 400 if any
    job = await compile_job_async(script, CompileRequest(...))
"""

from .etag import JobTypeEtagMismatch, check_submitted_etag, go_json, job_type_etag
from .loader import (
    BUILTIN_JOB_TYPES_DIR,
    JobTypeLoadError,
    JobTypeRegistry,
    JobTypeScript,
    load_job_type_script,
)
from .model import (
    CompiledCommand,
    CompiledJob,
    CompiledTask,
    CompileError,
    CompileLimits,
    CompileRequest,
)
from .runtime import compile_job, compile_job_async
from .schema import JobTypeSchemaError, normalize_job_type
from .validation import validate_settings

__all__ = [
    "BUILTIN_JOB_TYPES_DIR",
    "CompileError",
    "CompileLimits",
    "CompileRequest",
    "CompiledCommand",
    "CompiledJob",
    "CompiledTask",
    "JobTypeEtagMismatch",
    "JobTypeLoadError",
    "JobTypeRegistry",
    "JobTypeSchemaError",
    "JobTypeScript",
    "check_submitted_etag",
    "compile_job",
    "compile_job_async",
    "go_json",
    "job_type_etag",
    "load_job_type_script",
    "normalize_job_type",
    "validate_settings",
]
