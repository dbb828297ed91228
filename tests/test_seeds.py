"""`child_seed`: the one way a seed is split into named streams, pinned to the values every cached and committed
artefact was made with."""

from __future__ import annotations

import pytest

from workbench.core.runtime import SEED_STREAMS, child_seed
from workbench.core.validation import WorkbenchError

#: stream -> the seeds it gave for parent 7, index 0 and 2, as the code computed them before the streams had names
PINNED = {"data_order": (8, None), "head_initialisation": (9, None), "global_rng": (10, None),
          "iab_data_order": (9, None), "iab_generators": (10, None), "nad_student": (8, None),
          "finetune_phase": (7, 27), "abl_phase": (7, 7 + 2_000_006), "patch_colour": (7, 9),
          "detection_images": (7, 9)}


@pytest.mark.parametrize("stream", sorted(SEED_STREAMS))
def test_streams_keep_the_seeds_artefacts_were_made_with(stream: str) -> None:
    first, third = PINNED[stream]
    assert child_seed(7, stream) == first
    if third is None:
        with pytest.raises(WorkbenchError, match="one member"):
            child_seed(7, stream, 2)
    else:
        assert child_seed(7, stream, 2) == third


def test_unknown_stream_names_the_known_ones() -> None:
    assert set(PINNED) == set(SEED_STREAMS)
    with pytest.raises(WorkbenchError, match="data_order"):
        child_seed(0, "dropout")
