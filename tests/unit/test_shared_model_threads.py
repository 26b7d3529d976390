"""A page's script thread and a job's worker thread run the same (shared) model at once: the hooks one of them
attaches for a moment (the shared-prefix evaluation's recorded states, the damage scan's injected states and
zeroed halves, AVSS's mask) act on its own forward passes only, so neither sees the other's tensors.

Found by the dashboard e2e test: the leaderboard's full board died on "The size of tensor a (256) must match the
size of tensor b (64)" while the page ran the model meanwhile."""

import threading

import numpy as np
import torch

from analysis.changes.variant import apply_actions
from analysis.evaluation import shared_prefix
from analysis.metrics import damage
from tests.unit.test_damage import SEARCH, TEXT, tiny
from tests.unit.test_shared_prefix import ACTIONS, SETTINGS


class Hammer:
    """Another thread running the original model with another sequence length until stopped."""

    def __init__(self, model, length: int = 7):
        self.model, self.length = model, length
        self.stop, self.runs, self.errors = threading.Event(), 0, []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        x = torch.arange(self.length)[None] % 50
        want = None
        while not self.stop.is_set():
            try:
                with torch.no_grad():
                    out = self.model(input_ids=x, use_cache=False).logits
                if want is None:
                    want = out
                elif not torch.equal(out, want):
                    self.errors.append("the other thread's forward changed the original's logits")
                self.runs += 1
            except Exception as exc:  # noqa: BLE001  (recorded and asserted on)
                self.errors.append(repr(exc))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_shared_prefix_evaluation_and_a_concurrent_forward_do_not_mix():
    lm = tiny(name="threads")
    ids = np.array(lm.tokenizer(TEXT.content)["input_ids"][: SETTINGS.n_tokens])
    models = [apply_actions(lm.model, a) for a in ACTIONS]
    alone = shared_prefix.evaluate_many(lm.model, ids, SETTINGS, models)
    with Hammer(lm.model) as other:
        together = [shared_prefix.evaluate_many(lm.model, ids, SETTINGS, models) for _ in range(3)]
    assert other.runs > 0 and other.errors == []
    for got in together:
        assert [c["perplexity"] for c in got.candidates] == [c["perplexity"] for c in alone.candidates]


def test_damage_scan_and_a_concurrent_forward_do_not_mix():
    lm = tiny(name="threads-scan")
    alone = damage.scan(lm, SEARCH, None, sites=damage.SITES, text=TEXT)
    with Hammer(lm.model) as other:
        together = damage.scan(lm, SEARCH, None, sites=damage.SITES, text=TEXT)
    assert other.runs > 0 and other.errors == []
    assert [r["nll"] for r in together] == [r["nll"] for r in alone]
