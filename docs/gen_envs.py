"""MkDocs hook: the environment pages, generated from the env registry at every build.

For every id of ``ala_gym.ENV_IDS`` it reads:

* the defaults: the registration's keywords bound to its env class's ``make_spec`` (``ALAClassificationEnv``,
  ``ALAMetricLearningEnv``) and completed with that signature's defaults, before any data is read;
* the spaces, render modes and episode settings: from the env itself, built with ``gym.make``. Datasets
  that live in files (Fashion-MNIST, CIFAR-10) are replaced, for this build only, by stand-in data of the
  same input shape and class count (``STAND_INS``), generated in memory: the build reads no file and
  downloads nothing, and the spaces, which depend on the class count and the task, are those of the real
  data (``tests/test_docs_site.py`` compares them where the real data is installed);
* the description: the registration's own (``ala_gym.registration.EnvVariant.description``).

Each id lands on the page of its family (``FAMILIES``); an id no family claims fails the build.
``python docs/gen_envs.py OUT`` writes the pages to a folder instead, for a look without MkDocs.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

STAND_INS: dict[str, tuple[tuple[int, ...], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),  # 28x28 grey images, 10 classes
    "cifar10": ((3, 32, 32), 10),  # 32x32 colour images, 10 classes
}
"""Datasets read from files, replaced while the pages are generated: name -> (input shape, class count)."""
STAND_IN_SAMPLES_PER_CLASS = 50


@dataclass
class Family:
    slug: str
    title: str
    claims: Callable[[EnvInfo], bool]
    intro: str
    statistics: str
    value: str


@dataclass
class EnvInfo:
    """What the pages say about one registered id."""

    env_id: str
    entry_point: str
    cls: type
    base: type
    kwargs: dict[str, Any]
    """Every keyword of the env class's ``make_spec``, as this id sets it by default."""
    base_defaults: dict[str, Any]
    description: str = ""
    observation_space: Any = None
    action_space: Any = None
    render_modes: list[str] = field(default_factory=list)
    history: int = 0
    rows: int = 0
    metric: str = ""
    higher_is_better: bool = False
    batchable: bool = True
    stand_in: bool = False
    row_form: str | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k not in self.base_defaults or self.base_defaults[k] != v}

    @property
    def steps(self) -> int:
        """Controller steps per episode: ``ceil(total_iterations / steps_per_action)``."""
        return -(-self.kwargs["total_iterations"] // self.kwargs["steps_per_action"])


FAMILIES = [
    Family(
        "classification",
        "Classification",
        lambda info: info.base.__name__ == "ALAClassificationEnv" and info.metric != "aucpr",
        "A child classifier trained under the adaptive loss of Eq. 6, `-y^T Phi log f(y|x)`; every step moves "
        "each symmetric class-pair entry of Phi down, not at all or up, and the reward is the sign of the "
        "change of the discounted validation metric (see [Concepts](../concepts.md)). One action entry and "
        "one observation row per class pair `(i, j)`, `i <= j`.",
        "`[C_ij, C_ji]` of Eq. 7 at the last steps, oldest first, divided by `log C`",
        "current `Phi(i, j)`",
    ),
    Family(
        "aucpr",
        "AUCPR",
        lambda info: info.base.__name__ == "ALAClassificationEnv" and info.metric == "aucpr",
        "The classification envs with the reward computed from the validation AUCPR (macro one-vs-rest average "
        "precision, higher is better) instead of the error rate: the setting of the paper's Table 2. A "
        "positive reward means the AUCPR went up; the test and final validation metrics are AUCPRs too.",
        "`[C_ij, C_ji]` of Eq. 7 at the last steps, oldest first, divided by `log C`",
        "current `Phi(i, j)`",
    ),
    Family(
        "metric-learning",
        "Metric learning",
        lambda info: info.base.__name__ == "ALAMetricLearningEnv",
        "An embedding child trained on some classes and rewarded by Recall@k on others (section 4 of the "
        "paper): the adaptive loss is the distance mixture of Eq. 9 (one row per mixture weight) or the focal "
        "weighting of Eq. 10 (one row per scale). The observation has the classification layout with one row "
        "per loss parameter instead of per class pair, so controllers built for class pairs act on it "
        "unchanged.",
        "the row's two distance statistics at the last steps, oldest first",
        "the row's value (a mixture weight, or `log16` of a focal scale)",
    ),
]


# ------------------------------------------------------------------------------------------- reading the registry
def default_kwargs(cls: type, registered: dict[str, Any]) -> dict[str, Any]:
    """Every keyword of ``cls.make_spec`` as an id registered with ``registered`` sets it; reads no data."""
    bound = inspect.signature(cls.make_spec).bind(**registered)
    bound.apply_defaults()
    return dict(bound.arguments)


def signature_defaults(cls: type) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls.make_spec).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _stand_in(name: str, shape: tuple[int, ...], classes: int, *, val_size: int | None = None, split_seed: int = 0,
              device: Any = "cpu") -> Any:  # fmt: skip
    import numpy as np

    from ala_gym.core.data import from_user_data

    rng = np.random.default_rng(0)
    count = STAND_IN_SAMPLES_PER_CLASS * classes
    images = rng.integers(0, 256, size=(count + count // 5, *shape), dtype=np.uint8)
    labels = np.arange(len(images)) % classes
    data = (images[:count], labels[:count], images[count:], labels[count:])
    return from_user_data(data, name=name, val_size=val_size, split_seed=split_seed, device=device)


@contextlib.contextmanager
def stand_in_datasets() -> Iterator[None]:
    """``STAND_INS`` replace the loaders of those datasets for the duration of the block, nothing cached after."""
    from ala_gym.core import data

    saved = {name: data.LOADERS[name] for name in STAND_INS if name in data.LOADERS}
    for name, (shape, classes) in STAND_INS.items():
        data.LOADERS[name] = partial(_stand_in, name, shape, classes)
    try:
        yield
    finally:
        data.LOADERS.update(saved)
        cache = getattr(data, "_CACHE", {})
        for key in [key for key in cache if key[0] in STAND_INS]:
            del cache[key]


def describe(env_id: str) -> EnvInfo:
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    spec = gym.spec(env_id)
    entry_point = spec.entry_point if isinstance(spec.entry_point, str) else ""
    from ala_gym import ENV_IDS

    cls = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    kwargs = default_kwargs(cls, dict(spec.kwargs))
    info = EnvInfo(env_id, entry_point, cls, cls, kwargs, signature_defaults(cls), ENV_IDS[env_id].description)
    info.stand_in = kwargs.get("dataset") in STAND_INS
    with stand_in_datasets():
        env = gym.make(env_id, disable_env_checker=True, **{**spec.kwargs, "device": "cpu"})
    try:
        unwrapped = env.unwrapped
        info.observation_space, info.action_space = env.observation_space, env.action_space
        info.render_modes = list(unwrapped.metadata.get("render_modes", []))
        info.history = unwrapped.settings.history
        info.rows = int(env.observation_space.shape[0])
        info.metric = unwrapped.metric
        info.higher_is_better = bool(unwrapped.evaluator.higher_is_better)
        info.batchable = bool(unwrapped.batchable)
        info.row_form = getattr(unwrapped, "row_form", None)
    finally:
        env.close()
    return info


def collect() -> list[EnvInfo]:
    import ala_gym

    return [describe(env_id) for env_id in ala_gym.ENV_IDS]


def family_of(info: EnvInfo) -> Family:
    claimed = [family for family in FAMILIES if family.claims(info)]
    if len(claimed) != 1:
        names = [family.slug for family in claimed]
        raise ValueError(f"{info.env_id} ({info.cls.__name__}) belongs to {names or 'no family'}: add it to FAMILIES in {__file__}")
    return claimed[0]


# ------------------------------------------------------------------------------------------- writing Markdown


def qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def code(value: Any) -> str:
    return f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def space_text(space: Any) -> str:
    import numpy as np
    from gymnasium import spaces

    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).ravel()
        inner = f"[{nvec[0]}] * {len(nvec)}" if np.all(nvec == nvec[0]) else str(nvec.tolist())
        return f"MultiDiscrete({inner})"
    if isinstance(space, spaces.Box):
        return f"Box({float(space.low.min()):g}, {float(space.high.max()):g}, shape={space.shape}, dtype={space.dtype})"
    return repr(space)


def ranges(space: Any, start: int, stop: int) -> str:
    lows, highs = space.low[0, start:stop], space.high[0, start:stop]
    found = sorted({(float(low), float(high)) for low, high in zip(lows, highs)})
    return ", ".join(f"[{low:g}, {high:g}]" for low, high in found)


def observation_columns(info: EnvInfo, family: Family) -> list[str]:
    h, space = info.history, info.observation_space
    columns = [(0, 2 * h, f"{family.statistics} ({h} steps x 2)"),
               (2 * h, 2 * h + 2, "relative change of the two statistics from their exponential moving average"),
               (2 * h + 2, 2 * h + 3, family.value),
               (2 * h + 3, 2 * h + 4, "progress: iterations done / `total_iterations`")]  # fmt: skip
    if space.shape[1] != 2 * h + 4:
        raise ValueError(f"{info.env_id}: {space.shape[1]} observation columns, not the 2 * history + 4 of the layout")
    lines = ["| columns | what | range |", "|---|---|---|"]
    for start, stop, what in columns:
        span = f"{start}" if stop - start == 1 else f"{start}-{stop - 1}"
        lines.append(f"| {span} | {what} | {ranges(space, start, stop)} |")
    return lines


def rows_text(info: EnvInfo) -> str:
    if info.base.__name__ == "ALAClassificationEnv":
        classes = (int((8 * info.rows + 1) ** 0.5) - 1) // 2
        return f"one per class pair `(i, j)`, `i <= j`: `C (C + 1) / 2` = {info.rows} for the data's C = {classes} classes"
    form = {"mixture": "distance mixture, Eq. 9", "focal": "focal weighting, Eq. 10"}.get(info.row_form or "", info.row_form)
    return f"one per loss parameter: {info.rows} ({form})"


def direction(info: EnvInfo) -> str:
    return "higher is better" if info.higher_is_better else "lower is better"


def class_link(cls: type) -> str:
    return f"[`{cls.__name__}`][{qualified(cls)}]"


def summary_table(infos: list[EnvInfo], page_of: Callable[[EnvInfo], str] | None = None) -> list[str]:
    lines = [
        "| id | dataset | model | reward metric | iterations | K | steps | rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for info in infos:
        k = info.kwargs
        name = f"[`{info.env_id}`]({page_of(info)}#{info.env_id})" if page_of else f"[`{info.env_id}`](#{info.env_id})"
        lines.append(
            f"| {name} | `{k.get('dataset')}` | `{k.get('model')}` | {info.metric} ({direction(info)}) "
            f"| {k['total_iterations']:,} | {k['steps_per_action']} | {info.steps} | {info.rows} |"
        )
    return lines


def env_section(info: EnvInfo, family: Family) -> list[str]:
    base = info.base
    lines = [f"## `{info.env_id}` {{#{info.env_id}}}", ""]
    lines += [f"Class {class_link(info.cls)}, entry point `{info.entry_point}`.", ""]
    if info.description:
        lines += [info.description, ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| action space | `{space_text(info.action_space)}` |",
        f"| observation space | `{space_text(info.observation_space)}` |",
        f"| rows | {rows_text(info)} |",
        f"| reward metric | `{info.metric}`, {direction(info)} |",
        f"| controller steps per episode | {info.steps} (`ceil(total_iterations / steps_per_action)`) |",
        f"| render modes | {', '.join(f'`{mode}`' for mode in info.render_modes) or 'none'} |",
        f"| children batched with `vmap` in the vector env | {'allowed' if info.batchable else 'no (trained one after another)'} |",
        "",
        "Observation columns (every row):",
        "",
        *observation_columns(info, family),
        "",
    ]
    overrides = info.overrides
    if overrides:
        lines += [f"Defaults that differ from {class_link(base)}'s (every other keyword as in "
                  f"[the table below](#keywords-{family.slug})):", "",
                  "| keyword | this id | base class |", "|---|---|---|"]  # fmt: skip
        for name, value in overrides.items():
            base_value = code(info.base_defaults[name]) if name in info.base_defaults else "(required)"
            lines.append(f"| `{name}` | {code(value)} | {base_value} |")
    else:
        lines.append(f"Every keyword at {class_link(base)}'s default ([table below](#keywords-{family.slug})).")
    if info.stand_in:
        lines += ["", f"Spaces read from the env built on stand-in data of `{info.kwargs['dataset']}`'s input shape "
                      "and class count (the build reads no dataset file)."]  # fmt: skip
    return lines + [""]


def keywords_table(base: type, family: Family) -> list[str]:
    lines = [f"## Keywords of `{base.__name__}` {{#keywords-{family.slug}}}", "",
             f"Every id of this page accepts each keyword of {class_link(base)}'s `make_spec` in "
             "`gym.make(id, **keywords)` and `gym.make_vec(id, num_envs=N, **keywords)` (and `num_threads`; "
             "`render_mode` in `gym.make`: the vector env does not render); the defaults of the env class:", "",
             "| keyword | default |", "|---|---|"]  # fmt: skip
    for name, parameter in inspect.signature(base.make_spec).parameters.items():
        default = "(required)" if parameter.default is inspect.Parameter.empty else code(parameter.default)
        lines.append(f"| `{name}` | {default} |")
    lines += ["", f"What each keyword does: the Arguments section of {class_link(base)} in the API reference."]
    return lines + [""]


def family_page(family: Family, infos: list[EnvInfo]) -> str:
    lines = [f"# {family.title} environments", "", family.intro, "",
             "Generated from the registry (`ala_gym.ENV_IDS`) when the site is built: ids, spaces and defaults "
             "are read from the envs themselves.", "", *summary_table(infos), "",
             "Iterations: `total_iterations`, the child's SGD budget; K: `steps_per_action`, SGD iterations per "
             "controller step; steps: controller steps per episode; rows: action entries and observation rows.",
             ""]  # fmt: skip
    for info in infos:
        lines += env_section(info, family)
    bases = list(dict.fromkeys(info.base for info in infos))
    for base in bases:
        lines += keywords_table(base, family)
    return "\n".join(lines)


def overview_page(infos: list[EnvInfo]) -> str:
    by_family = {family.slug: [info for info in infos if family_of(info) is family] for family in FAMILIES}
    lines = ["# Environments", "",
             "`import ala_gym` registers these ids with Gymnasium; `gym.make(id, **keywords)` builds one child, "
             "`gym.make_vec(id, num_envs=N, **keywords)` the native vector env of N children "
             "(`backend=\"ray\"`: the children on Ray actors). The pages are generated from the registry at "
             "every build of the site.", "",
             "| family | ids |", "|---|---|"]  # fmt: skip
    for family in FAMILIES:
        ids = ", ".join(f"[`{info.env_id}`]({family.slug}.md#{info.env_id})" for info in by_family[family.slug])
        lines.append(f"| [{family.title}]({family.slug}.md) | {ids or 'none'} |")
    lines += ["", "## Every id", "", *summary_table(infos, lambda info: f"{family_of(info).slug}.md"), "",
              "A task of one's own (its loss, its rows and their statistics) is a subclass of "
              "[`LossTask`][ala_gym.envs.task.LossTask] and an env whose `make_task()` returns it: see "
              "[Concepts](../concepts.md#a-task-of-ones-own).", ""]  # fmt: skip
    return "\n".join(lines)


def pages(infos: list[EnvInfo] | None = None) -> dict[str, str]:
    """``{path under docs/: Markdown}`` of every environment page."""
    infos = collect() if infos is None else infos
    for info in infos:
        family_of(info)  # an id no family claims fails here, before any page is written
    result = {"envs/index.md": overview_page(infos)}
    for family in FAMILIES:
        result[f"envs/{family.slug}.md"] = family_page(family, [info for info in infos if family_of(info) is family])
    return result


# ------------------------------------------------------------------------------------------- values in pages
PLACEHOLDER = re.compile(r"\{\{\s*([\w-]+)\.(\w+)\s*\}\}")
"""``{{ ALA-Digits-v0.total_iterations }}`` in a hand-written page: an id's default keyword, or one of
``rows``, ``steps``, ``features`` (observation columns); ``{{ ALAClassificationEnv.beta }}``: a keyword's
default in the signature of a class of ``ala_gym.envs``."""
INFOS: dict[str, EnvInfo] = {}


def placeholder_value(owner: str, name: str) -> Any:
    if owner in INFOS:
        info = INFOS[owner]
        computed = {"rows": info.rows, "steps": info.steps, "features": info.observation_space.shape[1]}
        if name in computed:
            return computed[name]
        if name in info.kwargs:
            return info.kwargs[name]
    else:
        import ala_gym.envs

        cls = getattr(ala_gym.envs, owner, None)
        defaults = signature_defaults(cls) if isinstance(cls, type) else {}
        if name in defaults:
            return defaults[name]
    raise ValueError(f"{{{{ {owner}.{name} }}}}: not an env id's keyword or value, nor a default of ala_gym.envs.{owner}")


def fill_placeholders(markdown: str) -> str:
    return PLACEHOLDER.sub(lambda match: str(placeholder_value(*match.groups())), markdown)


# ------------------------------------------------------------------------------------------- the MkDocs hooks
def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    infos = collect()
    INFOS.clear()
    INFOS.update({info.env_id: info for info in infos})
    for path, text in pages(infos).items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if getattr(page.file, "generated_by", None):  # only the hand-written pages hold placeholders
        return markdown
    return fill_placeholders(markdown)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "envs-pages")
    for path, text in pages().items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
        print(out / path)
