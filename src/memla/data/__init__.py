"""MKEB-format data: the record schema, validation, loading / saving, converters.

Public API::

    from memla.data import MAX_TEXT_CHARS, builtin_datasets, load_dataset, save_dataset, validate
    records = load_dataset("mkeb-mini", split="dev")     # built-in, or a .json / .jsonl path
    records[0].edit["zh"].prompt                         # "{}的首都是"
    subset = stratified_sample(records, 16, seed=0)      # spread evenly over relations
    len(text) <= MAX_TEXT_CHARS                          # the longest text a record may hold

See DESIGN.md ("Data schema") for the layout; `memla.data.formats` converts
BMIKE-53, MzsRE, MLaKE, CounterFact and MQuAKE files into it.
"""

from memla.data.io import builtin_datasets, load_dataset, read_raw, save_dataset
from memla.data.sample import stratified_sample
from memla.data.schema import EditFact, Problem, Record
from memla.data.validation import MAX_TEXT_CHARS, ValidationReport, validate
from memla.errors import DataError

__all__ = [
    "MAX_TEXT_CHARS",
    "DataError",
    "EditFact",
    "Problem",
    "Record",
    "ValidationReport",
    "builtin_datasets",
    "load_dataset",
    "read_raw",
    "save_dataset",
    "stratified_sample",
    "validate",
]
