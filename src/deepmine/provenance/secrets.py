"""Secrets never reach MLflow: what is recorded (params, tags, config artifacts) is masked.

A key looks secret when its name contains password, passwd, token, secret, api_key, apikey or
credential (any case); its value is recorded as `***`. So is a value resolved from
`${oc.env:NAME}` when NAME looks secret, whatever key it sits under. The config a run trains
with is never changed: only the recorded copies are masked. A masked override cannot be
replayed, so commands that re-run a recorded run ask for the key again (`unmasked_overrides`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping

from deepmine.errors import DeepmineError

MASK = "***"
_WORDS = ("password", "passwd", "token", "secret", "api_key", "apikey", "credential")
_ENV = re.compile(r"\$\{oc\.env:\s*([^,}\s]+)")
_ENV_ONLY = re.compile(r"^\$\{oc\.env:[^,}]+\}$")  # an env reference without a default
# (`\\://`: Hydra escapes the colons of an override in what it logs)
_URL_PASSWORD = re.compile(r"[a-z][\w+.-]*\\?://[^:/@\s]+:([^@/\s]+)@")
_SHORTEST = 4  # literal values shorter than this are not hunted for inside other text


def is_secret_key(key: object) -> bool:
    """Whether a (dotted) key names a secret."""
    name = str(key).lower()
    return any(word in name for word in _WORDS)


def mask_config(cfg) -> object:
    """A plain, resolved copy of `cfg` (a DictConfig or a plain dict/list) with every secret
    masked: values under secret keys, values from `${oc.env:<secret name>}`, and any other
    string containing one of those values."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        raw = OmegaConf.to_container(cfg, resolve=False)
        container = OmegaConf.to_container(cfg, resolve=True)
        env_paths = set(_env_secret_paths(raw))
    else:
        container, env_paths = cfg, set()
    values = set(_secret_values(container, env_paths))
    return _masked(container, (), env_paths, values)


def secret_values(cfg, overrides: Iterable[str] = ()) -> set[str]:
    """The literal secret values in `cfg` and `overrides` (to hunt for in free text)."""
    from omegaconf import OmegaConf

    found: set[str] = set()
    if OmegaConf.is_config(cfg):
        raw = OmegaConf.to_container(cfg, resolve=False)
        found |= set(
            _secret_values(OmegaConf.to_container(cfg, resolve=True), set(_env_secret_paths(raw)))
        )
    elif cfg is not None:
        found |= set(_secret_values(cfg, set()))
    for item in overrides:
        key, value = _split(item)
        if key is not None and is_secret_key(key) and not _ENV_ONLY.match(value):
            found.add(value)
    return {v for v in found if len(v) >= _SHORTEST and v != MASK}


def mask_overrides(overrides: Iterable[str], values: Iterable[str] = ()) -> list[str]:
    """`key=value` items with a secret key become `key=***` (an `${oc.env:NAME}` reference
    is kept: it is not the secret and replays as is); other items are kept, with a URL's
    password and any known secret value inside them masked."""
    out = []
    for item in overrides:
        item = str(item)
        key, value = _split(item)
        if key is not None and is_secret_key(key) and not _ENV_ONLY.match(value):
            item = f"{key}={MASK}"
        # a password inside a URL under any key (hydra.sweeper.storage=postgresql://u:pw@h/db):
        # a sweep's job does not have the sweeper's config to learn it from
        item = _URL_PASSWORD.sub(_masked_url_password, item)
        out.append(_scrub(item, values))
    return out


def _masked_url_password(match: re.Match) -> str:
    start = match.start(1) - match.start(0)
    return f"{match.group(0)[:start]}{MASK}@"


def mask_text(yaml_text: str, values: Iterable[str] = ()) -> str:
    """A YAML document (a config, Hydra's overrides.yaml or hydra.yaml) with secret keys,
    secret `key=value` overrides and known secret values masked."""
    import yaml

    values = set(values)
    data = yaml.safe_load(yaml_text)
    values |= set(_secret_values(data, set()))
    values |= _override_values(data)
    values = {v for v in values if len(v) >= _SHORTEST and v != MASK}
    masked = _masked(data, (), set(), values)
    return yaml.safe_dump(masked, sort_keys=False, allow_unicode=True)


def mask_yaml_file(path, values: Iterable[str] = ()) -> bool:
    """Rewrite the YAML file `path` masked (`mask_text`) when it holds a secret; whether it did.

    Hydra writes `.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml` (and a sweep's
    `multirun.yaml`) with the values as given, before deepmine's code runs: the output folders
    would keep in clear what the store never holds. The new text replaces the old one by a
    rename, so the file is never seen half-written."""
    import os
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text()
    masked = mask_text(text, values)
    # the same text needs no parse (two parses of Hydra's files were ~0.09 s of every job)
    if masked == text or yaml.safe_load(masked) == yaml.safe_load(text):
        return False  # nothing secret in it: Hydra's own text stays, byte for byte
    scratch = path.with_name(f".{path.name}.{os.getpid()}.masking")
    scratch.write_text(masked)
    os.replace(scratch, path)
    return True


def unmasked_overrides(
    recorded: list[str], run_id: str, given: Iterable[str] = (), fix: str | None = None
) -> list[str]:
    """The recorded overrides of `run_id`, ready to replay: a masked one is replaced by the
    same key given again in `given` (and dropped from the recorded list), or refused in one
    line naming the key."""
    given_keys = {k.lstrip("+~") for k, _ in map(_split, given) if k is not None}
    kept, missing = [], []
    for item in recorded:
        key, value = _split(item)
        if key is None or value != MASK or not is_secret_key(key):
            kept.append(item)
        elif key.lstrip("+~") in given_keys:
            continue  # the value given on this command line replaces it
        else:
            missing.append(key)
    if missing:
        again = " ".join(f"{k}=<value>" for k in missing)
        names = ", ".join(k.lstrip("+~") for k in missing)
        raise DeepmineError(
            f"run {run_id} was recorded with the secret {names} masked (***), so it cannot be "
            "replayed as recorded",
            fix or f"pass it again on the command line: {again}",
        )
    return kept


def mask_values(text: str, values: Iterable[str]) -> str:
    """`text` with every known secret value in it replaced by `***`."""
    return _scrub(str(text), values)


def _split(item: str) -> tuple[str | None, str]:
    item = str(item)
    if "=" not in item:
        return None, item
    key, value = item.split("=", 1)
    return key.strip(), value


def _scrub(text: str, values: Iterable[str]) -> str:
    for value in sorted(set(values), key=len, reverse=True):
        if value and len(value) >= _SHORTEST:
            text = text.replace(value, MASK)
    return text


def _env_secret_paths(raw, path: tuple = ()):
    """Paths of values that are (or embed) `${oc.env:<secret name>}`."""
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            yield from _env_secret_paths(value, (*path, key))
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            yield from _env_secret_paths(value, (*path, i))
    elif isinstance(raw, str) and any(is_secret_key(n) for n in _ENV.findall(raw)):
        yield path


def _secret_values(data, env_paths: set, path: tuple = ()):
    if path and (path in env_paths or is_secret_key(path[-1])):
        if isinstance(data, Mapping | list):
            for leaf in _leaves(data):
                yield str(leaf)
        elif data is not None:
            yield str(data)
        return
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _secret_values(value, env_paths, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _secret_values(value, env_paths, (*path, i))
    elif isinstance(data, str):
        # a password inside a URL (http://user:password@host, postgresql://...), whatever key
        yield from (m.group(1) for m in _URL_PASSWORD.finditer(data))


def _override_values(data) -> set[str]:
    """Values of secret `key=value` overrides found anywhere in `data` (hydra.yaml lists)."""
    found = set()
    items = [x for x in _leaves(data) if isinstance(x, str)]
    listed = {x for lst in _lists(data) for x in lst if isinstance(x, str)}
    for leaf in items:
        key, value = _split(leaf)
        if key is not None and is_secret_key(key) and not _ENV_ONLY.match(value):
            # a joined `a=1,b=2` outside a list (Hydra's override_dirname): its first value
            found.add(value if leaf in listed else value.split(",")[0])
    return found


def _lists(data):
    if isinstance(data, Mapping):
        for value in data.values():
            yield from _lists(value)
    elif isinstance(data, list):
        yield data
        for value in data:
            yield from _lists(value)


def _leaves(data):
    if isinstance(data, Mapping):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from _leaves(value)
    else:
        yield data


def _masked(data, path: tuple, env_paths: set, values: set):
    if path and (path in env_paths or (isinstance(path[-1], str) and is_secret_key(path[-1]))):
        if data is None or (isinstance(data, str) and _ENV_ONLY.match(data)):
            return data
        return MASK
    if isinstance(data, Mapping):
        return {k: _masked(v, (*path, k), env_paths, values) for k, v in data.items()}
    if isinstance(data, list):
        return [_masked(v, (*path, i), env_paths, values) for i, v in enumerate(data)]
    if isinstance(data, str):
        data = _scrub(data, values)
        key, value = _split(data)
        if key is not None and is_secret_key(key) and not _ENV_ONLY.match(value):
            return data if MASK in value else f"{key}={MASK}"
        return data
    return data


#: the loggers of Hydra's launchers (and deepmine's), which log each job's overrides
LAUNCHER_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    "hydra_plugins.deepmine_launchers._jobs",
)


@contextlib.contextmanager
def masked_logs(values: Iterable[str] = (), loggers: Iterable[str] = LAUNCHER_LOGGERS):
    """Within the block, what `loggers` log has secret `key=value` items, URL passwords and
    the known `values` masked.

    Hydra's launchers log each job's overrides as they start it (`#0 : +db.password=...`), to
    the console a sweep's output is captured from (CI logs, `nohup.out`, SLURM's .out files).
    The filter sits on the loggers themselves: Hydra replaces the handlers when it configures
    each job's logging."""
    import logging

    values = set(values)

    class Masking(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            with contextlib.suppress(Exception):  # a log line must never break the sweep
                message = record.getMessage()
                masked = " ".join(mask_overrides(message.split(" "), values))
                if masked != message:
                    record.msg, record.args = masked, ()
            return True

    masking = Masking()
    found = [logging.getLogger(name) for name in loggers]
    for logger in found:
        logger.addFilter(masking)
    try:
        yield
    finally:
        for logger in found:
            logger.removeFilter(masking)
