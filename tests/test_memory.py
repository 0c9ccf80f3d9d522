"""kerascnn.memory: the figures the tuner, the export and `bench train` read about a process's memory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from kerascnn.memory import live_heap_mib, memory_mib

PARENT_MIB = 600


def test_a_process_started_by_a_large_one_reports_its_own_peak():
    """`bench train` measures each folder in a child of a process that holds TensorFlow and a trained
    network: ru_maxrss, inherited across exec, gave the parent's peak for every child alike."""
    held = np.ones(PARENT_MIB * 2**20, np.uint8)  # every page written, so resident
    child = subprocess.run([sys.executable, "-c", "import json; from kerascnn.memory import memory_mib; "
                            "print(json.dumps(memory_mib()))"], capture_output=True, text=True, check=True)
    now, peak = json.loads(child.stdout)
    assert held.sum() == held.size and memory_mib()[1] > PARENT_MIB
    assert 0 < now <= peak < PARENT_MIB / 4, (now, peak)


def test_the_live_heap_counts_what_is_held_and_not_what_was_freed():
    before = live_heap_mib()
    held = np.ones(64 * 2**20, np.uint8)
    with_array = live_heap_mib()
    del held
    assert with_array - before > 63 and live_heap_mib() - before < 1, (before, with_array, live_heap_mib())
