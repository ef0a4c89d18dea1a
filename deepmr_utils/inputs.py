"""Your model and your sequences, read from files: what the ``deepmr`` command runs on.

* :func:`load_model` - a TorchScript file, a ``torch.export`` program (``.pt2``), or
  ``package.module:factory`` plus a state-dict file (loaded with ``weights_only=True``);
* :func:`read_output_names` - one output name per line;
* :func:`read_sequences` - a FASTA file, each record centred and cut to the model's length;
* :func:`read_regions` - BED regions centred and resized to the model's length, cut from an
  indexed genome FASTA with ``pyfaidx``.

N positions follow the library's rule (:func:`deepmr_utils.sequence.one_hot`): never guessed.
A sequence with more than ``max_n`` of them is refused with its name; up to ``max_n`` are
encoded as all-zero columns, which ISM then mutates to all four bases.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ._validate import first_line
from .sequence import one_hot, read_fasta

__all__ = ["load_model", "read_output_names", "read_sequences", "read_regions"]


def load_model(spec: str | os.PathLike, weights: str | os.PathLike | None = None) -> nn.Module:
    """One model in eval mode, from ``spec``:

    * a TorchScript file (``torch.jit.save``);
    * a ``torch.export`` program (a ``.pt2`` file from ``torch.export.save``), run as its module;
    * ``"package.module:factory"``: ``factory()`` builds the model and ``weights`` (a state-dict
      file, read with ``weights_only=True``, so it cannot run code) fills it.

    Raises ``ValueError`` naming the problem: a missing file, a factory that cannot be imported,
    weights given where they are not used, or a file that is neither format.
    """
    text = str(spec)
    if ":" in text and not Path(text).exists():
        module_name, _, attr = text.partition(":")
        if weights is None:
            raise ValueError(f"model {text!r} is a factory; pass its state-dict file as weights")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import the model factory {text!r}: {err}") from err
        model = factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{text}() returned {type(model).__name__}, not a torch.nn.Module")
        path = _existing(weights, "weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors, truncated files: one message, the file named
            raise ValueError(f"{path} is not a state-dict file torch can read with weights_only=True: {err}") from err
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit {text}(): {first_line(err)}") from err
        return model.eval()
    path = _existing(spec, "model file")
    if weights is not None:
        raise ValueError(f"weights are only used with a 'package.module:factory' model, not with the file {path}")
    if path.suffix == ".pt2":
        return _load_program(path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise ValueError(
            f"{path} is not a TorchScript file (torch.jit.save); for a state dict pass "
            f"'package.module:factory' as the model and this file as its weights ({type(err).__name__})"
        ) from err


class ExportedProgram(nn.Module):
    """A ``torch.export`` program as a model: ``(N, 4, L)`` in, its outputs out, any batch size.

    A program exported with a fixed batch ``batch`` runs in slices of that size (the last one
    padded and cut back); one exported with a dynamic batch (``batch=None``) runs as is. The
    program was captured in eval mode and cannot switch (torch refuses ``.eval()`` on it), so
    ``train``/``eval`` only set this wrapper's flag.
    """

    def __init__(self, program: nn.Module, batch: int | None):
        super().__init__()
        self.program, self.batch = program, batch

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x: torch.Tensor):
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        n, parts = x.shape[0], []
        for i in range(0, n, self.batch):
            part = x[i : i + self.batch]
            pad = self.batch - part.shape[0]
            if pad:
                part = torch.cat([part, part[:1].expand(pad, *part.shape[1:])])
            parts.append(self.program(part))
        out = _concat(parts)
        return _map_tensors(out, lambda t: t[:n])


def _concat(parts):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], (tuple, list)):
        return type(parts[0])(_concat([p[i] for p in parts]) for i in range(len(parts[0])))
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    raise TypeError(f"an exported program returned {type(parts[0]).__name__}; expected tensors")


def _map_tensors(v, fn):
    if isinstance(v, torch.Tensor):
        return fn(v)
    if isinstance(v, (tuple, list)):
        return type(v)(_map_tensors(x, fn) for x in v)
    if isinstance(v, dict):
        return {k: _map_tensors(x, fn) for k, x in v.items()}
    return v


class _RefusedPickle:
    """Stands in for ``pickle`` inside torch's archive reader: an opaque pickled constant is code."""

    @staticmethod
    def loads(*args, **kwargs):
        raise pickle.UnpicklingError("an opaque pickled object (unpickling it could run code)")


def _load_program(path: Path) -> ExportedProgram:
    """A ``.pt2`` file read with no unrestricted unpickler: torch's reader falls back to
    ``torch.load(weights_only=False)`` for sample inputs and pickled weights and to ``pickle.loads``
    for opaque constants, any of which runs code planted in the archive. While it reads, both are
    restricted (``weights_only=True``; opaque objects refused), so such a file is refused instead."""
    from torch.export.pt2_archive import _package

    safe_load = torch.load

    def restricted(*args, **kwargs):
        kwargs["weights_only"] = True
        return safe_load(*args, **kwargs)

    torch.load, real_pickle = restricted, _package.pickle
    _package.pickle = _RefusedPickle
    try:
        program = torch.export.load(str(path))
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds pickled objects beyond tensors, which only an unrestricted unpickler reads; refused, "
            f"because unpickling can run code ({first_line(err, 120)})"
        ) from err
    except Exception as err:
        raise ValueError(f"{path} is not a torch.export program (.pt2): {first_line(err, 200)}") from err
    finally:
        torch.load, _package.pickle = safe_load, real_pickle
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    if len(inputs) != 1 or "val" not in inputs[0].meta:
        raise ValueError(f"{path}: the program takes {len(inputs)} user inputs; a model takes one (the sequences)")
    first = inputs[0].meta["val"].shape[0]
    return ExportedProgram(program.module(), first if isinstance(first, int) else None).eval()


def read_output_names(path: str | os.PathLike) -> list[str]:
    """Output names, one per line (blank lines and ``#`` comments skipped); duplicates are refused."""
    p = _existing(path, "output-names file")
    names = [line.strip() for line in p.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"{p} holds no output names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{p} names some outputs twice: {dup}")
    return names


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {p} does not exist")
    return p


def _encode(names: list[str], seqs: list[str], max_n: int) -> torch.Tensor:
    for name, s in zip(names, seqs):
        n = sum(c not in "ACGTacgt" for c in s)
        if n > max_n:
            raise ValueError(
                f"{name} has {n} positions that are not A, C, G or T (at most {max_n} allowed; raise max_n to "
                "encode them as all-zero columns, or drop the sequence)"
            )
    return one_hot([s.upper() for s in seqs], non_acgt="zero")


def read_sequences(path: str | os.PathLike, length: int, *, max_n: int = 0) -> tuple[list[str], torch.Tensor]:
    """The records of a FASTA file, each centred and cut to ``length``: ``(names, X)`` with ``X``
    one-hot ``(N, 4, length)``. A record shorter than ``length`` is refused with its name."""
    records = read_fasta(_existing(path, "FASTA file"))
    short = [f"{k} ({len(v)} bp)" for k, v in records.items() if len(v) < length]
    if short:
        raise ValueError(f"{len(short)} sequence(s) are shorter than the model's input of {length} bp: {short[:5]}")
    names = list(records)
    seqs = [records[k][(len(records[k]) - length) // 2 :][:length] for k in names]
    return names, _encode(names, seqs, max_n)


def _check_index(genome: Path) -> None:
    """Refuse a stale ``.fai``: pyfaidx rebuilds the index only when the genome is newer than it, and
    copies that keep mtimes (``cp -p``, ``rsync -a``, ``tar``) can leave an index of another file, which
    reads the wrong bases at the right length. The last record must end where the file ends."""
    fai = Path(f"{genome}.fai")
    if not fai.is_file():
        return
    end, slack = 0, 0
    for line in fai.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        rlen, offset, lenc, lenb = int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4])
        lines = -(-rlen // lenc) if lenc else 0
        stop = offset + rlen + lines * (lenb - lenc)
        if stop >= end:
            end, slack = stop, max(lenb - lenc, 1)
    size = genome.stat().st_size
    if not end - slack <= size <= end + 2:  # a missing or doubled newline at the very end is fine
        raise ValueError(
            f"genome FASTA {genome}: its index {fai} describes another file ({end} bytes, the file has {size}); "
            "it is stale (the genome was replaced and kept an older date): delete it to rebuild it"
        )


def read_regions(
    bed: str | os.PathLike, genome: str | os.PathLike, length: int, *, max_n: int = 0
) -> tuple[list[str], torch.Tensor]:
    """BED regions centred and resized to ``length``, cut from ``genome`` (FASTA, indexed by ``pyfaidx``):
    ``(names, X)``. A name is the BED name column when present, else ``chrom:start-end``. A region
    whose window runs off its chromosome, or on a chromosome the genome lacks, is refused."""
    import pyfaidx  # only the BED route needs it

    genome = _existing(genome, "genome FASTA")
    try:
        fasta = pyfaidx.Fasta(str(genome), sequence_always_upper=True)
    except (pyfaidx.FastaIndexingError, pyfaidx.RegionError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"genome FASTA {genome} cannot be indexed (is it FASTA, with lines of one width?): "
                         f"{first_line(err)}") from err  # fmt: skip
    _check_index(genome)
    names, seqs = [], []
    for line_no, line in enumerate(_existing(bed, "BED file").read_text().splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 3:
            raise ValueError(f"{bed}:{line_no}: a BED line needs chrom, start and end, got {line!r}")
        try:
            chrom, start, end = fields[0], int(fields[1]), int(fields[2])
        except ValueError:
            got = f"{fields[1]!r}, {fields[2]!r}"
            raise ValueError(f"{bed}:{line_no}: start and end must be integers, got {got}") from None
        if not 0 <= start < end:
            raise ValueError(f"{bed}:{line_no}: a region needs 0 <= start < end, got {start}, {end}")
        if len(fields) > 5 and fields[5] == "-":  # read forward it would be the other strand's sequence
            raise ValueError(
                f"{bed}:{line_no}: minus-strand regions are not supported; the sequence would be read "
                "forward. Drop the strand column, or reverse-complement the sequences yourself (FASTA)"
            )
        name = fields[3] if len(fields) > 3 and fields[3] not in ("", ".") else f"{chrom}:{start}-{end}"
        if chrom not in fasta:
            raise ValueError(f"{bed}:{line_no}: {name} is on {chrom!r}, which the genome does not have")
        a = (start + end) // 2 - length // 2
        b = a + length
        if a < 0 or b > len(fasta[chrom]):
            raise ValueError(
                f"{bed}:{line_no}: {name} centred to {length} bp ({chrom}:{a}-{b}) runs off {chrom} "
                f"(length {len(fasta[chrom])})"
            )
        seq = str(fasta[chrom][a:b])
        if len(seq) != length:  # a stale .fai (the genome replaced, its mtime kept) reads the wrong bytes
            raise ValueError(f"{bed}:{line_no}: {name}: the genome returned {len(seq)} bp for {chrom}:{a}-{b}, not "
                             f"{length}; is {genome}.fai stale? delete it to rebuild the index")  # fmt: skip
        names.append(name)
        seqs.append(seq)
    if not names:
        raise ValueError(f"{bed} holds no regions")
    if len(set(names)) != len(names):
        raise ValueError(f"{bed}: region names must be unique")
    return names, _encode(names, seqs, max_n)
