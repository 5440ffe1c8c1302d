"""The manifest fields a :class:`~e3traj.runtime.Bundle` exposes as properties (read-only views of the verified
manifest; a mixin so the bundle's own module keeps to opening and running)."""

from __future__ import annotations

__all__ = ["ManifestFields"]


class ManifestFields:
    """Properties over ``self._manifest`` and what the bundle derived from it at opening (``_input_meanings``,
    ``_history``, ``_n_beads``, ``_threads``)."""

    _manifest: dict
    _input_meanings: dict
    _history: int
    _n_beads: int
    _threads: int

    @property
    def kind(self) -> str:
        """``model.kind`` from the manifest (``e3nn``, ``baseline``, ``e3nn-velocity``...)."""
        return str(self._manifest.get("model", {}).get("kind", "unknown"))

    @property
    def equivariant(self) -> bool:
        """``model.equivariant`` from the manifest (False: its equivariance check is expected to fail)."""
        return bool(self._manifest.get("model", {}).get("equivariant", False))

    @property
    def inputs(self) -> list[dict]:
        """The manifest's input specifications (name, dtype, shape, meaning)."""
        return list(self._manifest["inputs"])

    @property
    def input_meanings(self) -> dict[str, str]:
        """Input name -> ``positions`` | ``previous_displacement``."""
        return dict(self._input_meanings)

    @property
    def output_meaning(self) -> str:
        """``displacement`` | ``next_positions`` | ``velocity_correction``."""
        return self._manifest["outputs"][0]["meaning"]

    @property
    def needs_previous(self) -> bool:
        """True when :meth:`step` needs frames before the current one (velocity-aware and history bundles)."""
        return self._history > 0

    @property
    def n_beads(self) -> int:
        """Beads per frame N: the bundle's graph is the complete graph of N nodes (``model.num_nodes``)."""
        return self._n_beads

    @property
    def history(self) -> int:
        """How many frames before the current one :meth:`step` needs (0, 1, or H of a history bundle)."""
        return self._history

    @property
    def ar_coefficients(self) -> tuple[float, ...]:
        """``model.ar_coefficients``: the AR extrapolation the output corrects (empty for other bundles)."""
        return tuple(float(c) for c in self._manifest.get("model", {}).get("ar_coefficients") or ())

    @property
    def noise_scale(self) -> float | None:
        """``model.noise_scale``: the sampled rollouts' noise per coordinate (see :attr:`noise_rule`), or None."""
        return None if (v := self._manifest.get("model", {}).get("noise_scale")) is None else float(v)

    @property
    def noise_rule(self) -> str:
        """``model.noise_rule``: how ``noise_scale`` was fitted (:data:`contract.NOISE_RULES`)."""
        return str(self._manifest.get("model", {}).get("noise_rule", "residual"))

    @property
    def permutation(self) -> str:
        """``model.permutation``: ``any`` (complete graph) or ``chain_reversal`` (a model that knows the bonds)."""
        return str(self._manifest.get("model", {}).get("permutation", "any"))

    @property
    def threads(self) -> int:
        """Threads that run the sub-batches of a large batch concurrently (see :meth:`open`)."""
        return self._threads

    @property
    def example_atol(self) -> float:
        """The tolerance of the example re-check (``example.atol``)."""
        return float(self._manifest["example"].get("atol", 1e-5))
