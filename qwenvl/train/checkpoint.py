"""Crash-safe training checkpoints: model, optimizer, scheduler, RNG and data position, written atomically.

On-disk layout of a run directory::

    run_dir/
      latest                    "step-00000120\\n", replaced atomically after every save
      step-00000100/            one complete checkpoint (the older ones beyond `keep` are deleted)
      step-00000120/
        model.safetensors       model state, tensors under their state-dict names
        model.json              the state's structure (names of the tensors, non-tensor values)
        optimizer.safetensors   optimizer state tensors (exp_avg, exp_avg_sq, step, ...) under their paths
        optimizer.json          param_groups and the nesting of the state, tensors referenced by name
        scheduler.json          scheduler state (tensors, if any, go to scheduler.safetensors)
        rng.json / rng.safetensors      python `random`, numpy, torch CPU (and CUDA) generator states
        data.json               data position (epoch, index, sampler seed, ...)
        extra.json              anything else the trainer wants back (config, metrics, ...)
        COMPLETE                manifest: {"format", "version", "step", "files": {name: {"bytes", "sha256"}}}

Every state is stored the same way, without pickle: tensors go to `<name>.safetensors` (named by their path in
the state, e.g. "state.0.exp_avg"), everything else to `<name>.json`, where a tensor is {"__tensor__": name}
and tuples, non-string dict keys (the optimizer's integer parameter ids), numpy arrays and torch dtypes are
tagged so they come back with their types. Loading never executes code from the checkpoint.

Atomicity protocol of `save_checkpoint`:
  1. write every file into `run_dir/.tmp-step-XXXXXXXX.<pid>.<random>/`, fsync each file;
  2. write the `COMPLETE` manifest (sizes + sha256 of every file) last, fsync it and the temp directory;
  3. `os.replace` the temp directory to `step-XXXXXXXX` and fsync `run_dir` (the checkpoint now exists whole);
  4. write `latest` through a temp file + fsync + `os.replace`, fsync `run_dir`;
  5. only then delete checkpoints beyond `keep` (each renamed to `.tmp-del-...` first, then removed).
A crash (even SIGKILL or power loss) at any point leaves either the old state or the new one: a half-written
checkpoint only ever exists under a `.tmp-*` name, which loaders ignore and clean up. `load_checkpoint`
follows `latest`; if it is missing, corrupt or names a checkpoint that fails validation, it falls back to the
newest step directory whose manifest validates (sizes and sha256).

Single writer: one process (rank 0) saves into a run directory. Sharded FSDP states are saved with
torch.distributed.checkpoint elsewhere; tensors given here must be ordinary (full) tensors.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "list_checkpoints", "latest_step",
           "verify_checkpoint", "clean_temporaries", "CheckpointError", "NoCheckpointError", "FORMAT", "VERSION"]

FORMAT = "qwenvl-train-checkpoint"
VERSION = 1
MANIFEST = "COMPLETE"
LATEST = "latest"
_STATES = ("model", "optimizer", "scheduler", "rng", "data", "extra")
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, corrupt or not ours; the message names the directory and the problem."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """No complete checkpoint in the run directory."""


def step_dir_name(step: int) -> str:
    return f"step-{int(step):08d}"


# --- structure <-> (JSON, tensors) -------------------------------------------------------------------------

_TAGS = ("__tensor__", "__tuple__", "__dict__", "__ndarray__", "__dtype__", "__float__")


class _Packer:
    """Splits a nested state into a JSON-able structure and a flat {name: tensor} dict for safetensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, str] = {}  # identical views of one storage are stored once (tied weights)
        self._storages: set[int] = set()

    def _name(self, path: str) -> str:
        name, k = path or "tensor", 1
        while name in self.tensors:
            name, k = f"{path}#{k}", k + 1
        return name

    def tensor(self, t: torch.Tensor, path: str) -> dict:
        plain = type(t) is torch.Tensor or type(t) is torch.nn.Parameter
        if not plain or t.is_sparse or t.is_nested or t.device.type == "meta":
            raise TypeError(f"{path}: only plain dense tensors can be checkpointed (got {type(t).__name__} on "
                            f"{t.device}); gather sharded tensors (DTensor.full_tensor()) first")
        t = t.detach()
        key = None
        if t.numel() > 0:
            key = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                   tuple(t.stride()), t.dtype)
            if key in self._views:  # the same view again (tied weights): stored once, referenced twice
                return {"__tensor__": self._views[key]}
        t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        elif t.numel() > 0:
            ptr = t.untyped_storage().data_ptr()
            if ptr in self._storages:  # a different view of a storage already written: safetensors needs a copy
                t = t.clone()
            self._storages.add(t.untyped_storage().data_ptr())
        name = self._name(path)
        self.tensors[name] = t
        if key is not None:
            self._views[key] = name
        return {"__tensor__": name}

    def pack(self, obj: Any, path: str = "") -> Any:
        sub = (lambda k: f"{path}.{k}" if path else str(k))
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return obj if np.isfinite(obj) else {"__float__": repr(float(obj))}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError(f"{path}: numpy object arrays cannot be checkpointed")
            data = base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode()
            return {"__ndarray__": {"dtype": obj.dtype.str, "shape": list(obj.shape), "base64": data}}
        if isinstance(obj, np.generic):
            return self.pack(obj.item(), path)
        if isinstance(obj, torch.dtype):
            return {"__dtype__": str(obj).removeprefix("torch.")}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.pack(v, sub(i)) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.pack(v, sub(i)) for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
                return {k: self.pack(v, sub(k)) for k, v in obj.items()}
            return {"__dict__": [[self.pack(k, sub("key")), self.pack(v, sub(k))] for k, v in obj.items()]}
        raise TypeError(f"{path or '<root>'}: cannot checkpoint a {type(obj).__name__}; use tensors, numbers, "
                        "strings, lists, tuples, dicts, numpy arrays or None")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, v), = obj.items()
        if tag == "__tensor__":
            return tensors[v]
        if tag == "__tuple__":
            return tuple(_unpack(x, tensors) for x in v)
        if tag == "__dict__":
            return {_hashable(_unpack(k, tensors)): _unpack(x, tensors) for k, x in v}
        if tag == "__ndarray__":
            return np.frombuffer(base64.b64decode(v["base64"]), dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
        if tag == "__dtype__":
            dt = getattr(torch, str(v), None)
            if not isinstance(dt, torch.dtype):
                raise CheckpointError(f"unknown dtype {v!r}")
            return dt
        if tag == "__float__":
            return float(v)
    return {k: _unpack(v, tensors) for k, v in obj.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


# --- file helpers -------------------------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_path(path)
    except OSError:  # some filesystems refuse fsync on directories; nothing more can be done there
        pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def _write_state(tmp: Path, name: str, state: Any) -> list[str]:
    """`<name>.json` (+ `<name>.safetensors` when the state has tensors); returns the file names written."""
    p = _Packer()
    structure = p.pack(state)
    files = []
    if p.tensors:
        st = tmp / f"{name}.safetensors"
        save_file(p.tensors, str(st), metadata={"format": FORMAT, "state": name})
        _fsync_path(st)
        files.append(st.name)
    _write_json(tmp / f"{name}.json", {"format": FORMAT, "version": VERSION, "state": name, "structure": structure})
    files.append(f"{name}.json")
    return files


def _remove_tree(path: Path) -> None:
    """Rename a directory to a `.tmp-del-*` name (so it never looks like a step directory while half
    deleted), then delete it."""
    trash = path.parent / f"{_TMP_PREFIX}del-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: this process is not inside a save while it loads or cleans
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporaries(run_dir: str | os.PathLike) -> list[str]:
    """Delete `.tmp-*` leftovers of interrupted saves (those of a process still alive on this host are kept).
    Returns the names removed."""
    run_dir = Path(run_dir)
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.iterdir():
        if not p.name.startswith(_TMP_PREFIX):
            continue
        m = re.search(r"\.(\d+)\.[0-9a-f]{8}$", p.name)
        if m and _pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


# --- save ----------------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                    optimizer_state: Any = None, scheduler_state: Any = None, rng_state: Any = None,
                    data_state: Any = None, extra: Any = None, keep: int | None = 3) -> Path:
    """Write `run_dir/step-{step:08d}/` atomically (see the module docstring), point `latest` at it and keep the
    newest `keep` checkpoints (None keeps all). Re-saving an existing step replaces it. Returns the directory.

    States: `model_state` a flat {name: tensor} dict (model.state_dict()); `optimizer_state` the torch
    optimizer's state_dict(); `scheduler_state` the LR scheduler's state_dict(); `rng_state` from
    `capture_rng()`; `data_state` the data position (JSON-able: epoch, index, seed, ...); `extra` anything
    JSON-able (plus tensors). Tensors are copied to CPU as they are written; the caller's objects are not
    modified."""
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    if not isinstance(model_state, dict) or not all(isinstance(k, str) for k in model_state):
        raise TypeError("model_state must be a dict of name -> tensor (model.state_dict())")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    tmp = run_dir / f"{_TMP_PREFIX}{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: list[str] = []
        for name, state in zip(_STATES, (model_state, optimizer_state, scheduler_state, rng_state, data_state,
                                         extra)):
            files += _write_state(tmp, name, state)
        manifest = {"format": FORMAT, "version": VERSION, "step": step, "created": time.time(),
                    "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files}}
        _write_json(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        if final.exists():
            _remove_tree(final)  # re-save of the same step: the previous copy goes first
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(run_dir)
    _write_latest(run_dir, final.name)
    if keep is not None:
        _prune(run_dir, step, keep)
    return final


def _write_latest(run_dir: Path, name: str) -> None:
    tmp = run_dir / f"{_TMP_PREFIX}latest.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    _write_bytes(tmp, (name + "\n").encode())
    os.replace(tmp, run_dir / LATEST)
    _fsync_dir(run_dir)


def _prune(run_dir: Path, step: int, keep: int) -> None:
    """Keep the new step and the keep-1 newest steps before it; steps after it (an abandoned timeline after
    resuming from an older checkpoint) are left alone."""
    older = [s for s in list_checkpoints(run_dir, complete_only=False) if s < step]
    for s in older[:max(0, len(older) - (keep - 1))]:
        _remove_tree(run_dir / step_dir_name(s))


# --- load ----------------------------------------------------------------------------------------------------

def list_checkpoints(run_dir: str | os.PathLike, *, complete_only: bool = True) -> list[int]:
    """Steps of the `step-*` directories, ascending (with complete_only, those that have a manifest)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in run_dir.iterdir():
        if (m := _STEP_RE.match(p.name)) and p.is_dir() and (not complete_only or (p / MANIFEST).is_file()):
            out.append(int(m.group(1)))
    return sorted(out)


def _read_latest(run_dir: Path) -> int | None:
    try:
        text = (run_dir / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    m = _STEP_RE.match(text)
    return int(m.group(1)) if m else None


def latest_step(run_dir: str | os.PathLike, *, verify: bool = False) -> int | None:
    """The step `load_checkpoint(run_dir)` would load (None when there is none)."""
    try:
        return _resolve(Path(run_dir), None, verify=verify)[0]
    except NoCheckpointError:
        return None


def verify_checkpoint(path: str | os.PathLike, *, hashes: bool = True) -> dict:
    """Check one step directory against its manifest (file sizes, and sha256 when `hashes`); returns the
    manifest or raises CheckpointError saying what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} manifest (an incomplete checkpoint)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"),
                                                                                            dict):
        raise CheckpointError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not one this code reads "
                              f"(<= {VERSION}); upgrade qwenvl")
    for name, info in manifest["files"].items():
        if not isinstance(info, dict) or "/" in name or name.startswith("."):
            raise CheckpointError(f"{path}: bad manifest entry {name!r}")
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != info.get("bytes"):
            raise CheckpointError(f"{path}: {name} has {f.stat().st_size} bytes, the manifest says {info.get('bytes')}")
        if hashes and _sha256(f) != info.get("sha256"):
            raise CheckpointError(f"{path}: {name} fails its sha256 check (corrupt)")
    return manifest


def _resolve(run_dir: Path, step: int | None, *, verify: bool) -> tuple[int, dict]:
    """(step, manifest) of the checkpoint to load."""
    if step is not None:
        if not (run_dir / step_dir_name(step)).is_dir():
            raise NoCheckpointError(f"no checkpoint for step {step} in {run_dir} (have {list_checkpoints(run_dir)})")
        return int(step), verify_checkpoint(run_dir / step_dir_name(step), hashes=verify)
    tried: list[str] = []
    pointed = _read_latest(run_dir)
    candidates = ([pointed] if pointed is not None else []) + [s for s in reversed(list_checkpoints(run_dir))
                                                               if s != pointed]
    for s in candidates:
        try:
            manifest = verify_checkpoint(run_dir / step_dir_name(s), hashes=verify)
        except CheckpointError as e:
            tried.append(str(e))
            continue
        if tried:
            warnings.warn(f"skipped unusable checkpoint(s) in {run_dir}: {'; '.join(tried)}; using step {s}",
                          stacklevel=3)
        return s, manifest
    raise NoCheckpointError(f"no complete checkpoint in {run_dir}" + (f" ({'; '.join(tried)})" if tried else ""))


def _read_state(path: Path, name: str, files: dict, map_location: str | torch.device) -> Any:
    jf = f"{name}.json"
    if jf not in files:
        return None
    doc = json.loads((path / jf).read_text())
    tensors: dict[str, torch.Tensor] = {}
    if f"{name}.safetensors" in files:
        tensors = load_file(str(path / f"{name}.safetensors"), device=str(map_location))
    return _unpack(doc["structure"], tensors)


def load_checkpoint(run_dir: str | os.PathLike, step: int | None = None, *, map_location: str | torch.device = "cpu",
                    verify: bool = True, clean: bool = True) -> dict:
    """Load a checkpoint: `step` if given, else the one `latest` names, else (missing, corrupt or failing
    validation) the newest step directory that validates. `verify` checks every file's sha256 against the
    manifest (sizes are always checked). `clean` first deletes `.tmp-*` leftovers of interrupted saves.

    Returns {"step", "path", "model_state", "optimizer_state", "scheduler_state", "rng_state", "data_state",
    "extra"}. Raises NoCheckpointError when there is none, CheckpointError when `step` is given and unusable."""
    run_dir = Path(run_dir)
    if clean:
        clean_temporaries(run_dir)
    s, manifest = _resolve(run_dir, step, verify=verify)
    path = run_dir / step_dir_name(s)
    files = manifest["files"]
    out: dict[str, Any] = {"step": s, "path": path}
    for name in _STATES:
        try:
            state = _read_state(path, name, files, map_location)
        except Exception as e:  # verified files that still do not read: not written by us
            raise CheckpointError(f"{path}: cannot read the {name} state ({type(e).__name__}: {e})") from e
        out["extra" if name == "extra" else f"{name}_state"] = state
    return out


# --- RNG -----------------------------------------------------------------------------------------------------

def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """States of python `random`, numpy's global generator, torch's CPU generator, every CUDA device's generator
    (when CUDA is available) and any named extra torch.Generator (e.g. a DataLoader's)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(legacy=False),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = {k: g.get_state() for k, g in generators.items()}
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what `capture_rng` captured (also after a save/load round trip)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [t.cpu().to(torch.uint8) for t in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"checkpoint has {len(cuda)} CUDA generator states for {torch.cuda.device_count()} "
                          "devices; restoring the first ones only", stacklevel=2)
            for i, t in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(t, i)
    for name, g in (generators or {}).items():
        saved = state.get("generators", {}).get(name)
        if saved is None:
            raise KeyError(f"the RNG state has no generator named {name!r}")
        g.set_state(saved.cpu().to(torch.uint8))
