"""Loss logs (CSV + JSONL, appended, resume-safe) and tqdm progress bars for the trainers."""
from __future__ import annotations

import csv
import json
from pathlib import Path
import sys
import time
from typing import Any, Mapping

from tqdm import tqdm


class LossLog:
    """Append-only loss log: ``<stem>.jsonl`` (every field) and ``<stem>.csv`` (fixed columns).

    On resume, rows at or after the resume step are dropped first, so the log never holds the
    same step twice.
    """

    def __init__(self, folder: str | Path, stem: str = 'train_log',
                 resume_from: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.folder / f'{stem}.jsonl'
        self.csv = self.folder / f'{stem}.csv'
        self._columns: list[str] | None = None
        if resume_from is None:
            for p in (self.jsonl, self.csv):
                p.unlink(missing_ok=True)
        else:
            rows = [r for r in self.read() if int(r.get('step', -1)) < resume_from]
            self.jsonl.unlink(missing_ok=True)
            self.csv.unlink(missing_ok=True)
            for r in rows:
                self.write(r)
        self.t0 = time.perf_counter()

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (plain scalars)."""
        clean = {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in row.items()}
        with open(self.jsonl, 'a', encoding='utf-8') as f:
            f.write(json.dumps(clean) + '\n')
        if self._columns is None:
            self._columns = list(clean)
            new = not self.csv.exists()
            with open(self.csv, 'a', newline='', encoding='utf-8') as f:
                w = csv.DictWriter(f, fieldnames=self._columns, extrasaction='ignore')
                if new:
                    w.writeheader()
                w.writerow(clean)
            return
        with open(self.csv, 'a', newline='', encoding='utf-8') as f:
            csv.DictWriter(f, fieldnames=self._columns, extrasaction='ignore').writerow(clean)

    def read(self) -> list[dict[str, Any]]:
        """All rows of the JSONL log."""
        if not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text(encoding='utf-8').splitlines()
                if line.strip()]

    def elapsed(self) -> float:
        """Seconds since this log object was created."""
        return time.perf_counter() - self.t0


def progress(total: int, initial: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr (disabled when not wanted, e.g. in tests)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=False)
