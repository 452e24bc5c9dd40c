"""Choice elements (`value[x]`, also when sliced by type) expanded into one element per type."""

from __future__ import annotations

from typing import Any

from fhirschema.converter.elements import type_name


def _is_choice(el: dict[str, Any]) -> bool:
    if el["path"].endswith("[x]"):
        return True
    types = el.get("type") or ()
    return len(types) > 1 and len({t.get("code") for t in types}) > 1


def _expand_choices(elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for el in elements:
        if not _is_choice(el) or "choiceOf" in el:
            out.append(el)
            continue
        types = el.get("type")
        if not types:
            continue  # `value[x]` without types only narrows cardinality: nothing to expand to
        base = el["path"][:-3] if el["path"].endswith("[x]") else el["path"]
        field = base.rsplit(".", 1)[-1]
        parent = {k: v for k, v in el.items() if k not in ("type", "binding")}
        parent["path"] = base
        parent["choices"] = [field + type_name(t["code"]) for t in types]
        out.append(parent)
        binding = el.get("binding")
        for t in types:
            variant = {k: v for k, v in el.items() if k != "binding"}
            variant.update(path=base + type_name(t["code"]), type=[t], choiceOf=field)
            # Example bindings say nothing checkable; the others constrain each variant.
            if binding and binding.get("strength") != "example":
                variant["binding"] = binding
            out.append(variant)
    return out


def _collapse_type_slicing(elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`value[x]` sliced by `type` on `$this` is just a choice: slices become variants."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(elements):
        el = elements[i]
        disc = (el.get("slicing") or {}).get("discriminator") or []
        if not (
            el["path"].endswith("[x]")
            and not el.get("sliceName")
            and len(disc) == 1
            and disc[0].get("type") == "type"
            and disc[0].get("path", "").strip() == "$this"
        ):
            out.append(el)
            i += 1
            continue
        root = el["path"]
        base = root[:-3]
        field = base.rsplit(".", 1)[-1]
        rest = {k: v for k, v in el.items() if k not in ("slicing", "type")}
        types = el.get("type") or []
        decl = {**rest, "path": base, "_choiceSlicing": el["slicing"]}
        if types:
            decl["choices"] = [field + type_name(t["code"]) for t in types]
        sliced: set[str] = set()
        collapsed: list[dict[str, Any]] = []
        variant_path: str | None = None
        j = i + 1
        while j < len(elements) and elements[j]["path"].startswith(root):
            sub = elements[j]
            if sub["path"] == root and sub.get("sliceName") and len(sub.get("type") or ()) == 1:
                tname = type_name(sub["type"][0]["code"])
                variant_path = base + tname
                sliced.add(field + tname)
                variant = {k: v for k, v in sub.items() if k != "sliceName"}
                variant.update(path=variant_path, choiceOf=field)
                # The choice's constraints hold for the value of every type, sliced or not
                # (IPS's ips-1 on `effective[x]`, whose dateTime slice repeats none of them).
                own = {c.get("key") for c in sub.get("constraint") or ()}
                inherited = [c for c in el.get("constraint") or () if c.get("key") not in own]
                if inherited:
                    variant["constraint"] = [*inherited, *(sub.get("constraint") or ())]
                collapsed.append(variant)
            elif sub["path"].startswith(root + ".") and variant_path:
                collapsed.append({**sub, "path": variant_path + sub["path"][len(root) :]})
            else:
                collapsed.append(sub)
                variant_path = None
            j += 1
        out.append(decl)
        for t in types:
            tname = type_name(t["code"])
            if field + tname not in sliced:
                variant = {k: v for k, v in rest.items() if k != "binding"}
                variant.update(path=base + tname, type=[t], choiceOf=field)
                out.append(variant)
        out.extend(collapsed)
        i = j
    return out
