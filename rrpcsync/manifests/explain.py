"""`plan --explain KEY`: the layers that built one device's payload, and which set each value.

The layers are read again from the manifest (and the device's inventory file) as written, so
`${env:…}` references show as references, never as the secret they resolve to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from rrpcsync.errors import UsageError
from rrpcsync.manifests import inventory, loader
from rrpcsync.manifests.overrides import Attribution, Layer, attribute, parse_overrides
from rrpcsync.model import DesiredDevice

DEFAULT_LAYER = "spec.payload"
DEVICE_LAYER = "device payload"


class Explanation(NamedTuple):
    device: DesiredDevice
    manifest_source: str  # "file:line" of the manifest
    layers: tuple[Layer, ...]  # in merge order; a layer whose payload is None adds nothing
    payload: Any  # the merged result, before `${env:…}` resolution
    values: tuple[Attribution, ...]  # each leaf of `payload` and the layer that set it


def explain(result: loader.LoadResult, key: str) -> Explanation:
    """Explain the device `key` (ProductId/DeviceName) of loaded, valid manifests."""
    device = next((d for d in result.devices if d.key == key), None)
    if device is None:
        raise UsageError(f"--explain {key}: no manifest declares this device")
    info = next(m for m in result.manifests if m.name == device.manifest)
    spec, root = _manifest_spec(info.file, info.name)
    default = Layer(
        DEFAULT_LAYER, _source(info.file, root, ("spec", "payload")), spec.get("payload")
    )
    marks = loader.item_marks(root, ("spec", "overrides"))
    overrides = parse_overrides(spec.get("overrides"), info.file, marks, lambda *_: None)
    matched = [Layer(o.label, o.source, o.payload) for o in overrides if o.matches(device.labels)]
    own = Layer(DEVICE_LAYER, device.source, _own_payload(device, info.file, spec))
    layers = (default, *matched, own)
    payload, values = attribute(layers)
    return Explanation(device, f"{info.file}:{info.line}", layers, payload, tuple(values))


def _manifest_spec(file: str, name: str) -> tuple[Mapping[str, Any], Any]:
    for document, root in loader.file_documents(file):
        if isinstance(document, dict) and document.get("metadata", {}).get("name") == name:
            return document["spec"], root
    raise UsageError(f"{file}: manifest {name!r} changed while it was read; try again")


def _source(file: str, root: Any, path: tuple[str, ...]) -> str:
    return f"{file}:{loader.line_of(root, path)}"


def _own_payload(device: DesiredDevice, manifest_file: str, spec: Mapping[str, Any]) -> Any:
    """The device's own `payload` as written (CSV rows have none)."""
    if device.file == manifest_file:
        entries: Any = spec.get("devices") or []
    elif inventory.is_csv(device.file):
        return None
    else:
        documents = loader.file_documents(device.file)
        entries = documents[0][0] if documents else []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == device.device_name:
            return entry.get("payload")
    return None
