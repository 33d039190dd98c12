"""`memla explore`: a local web page to edit a fact, watch it in every language, compare methods and see the neurons.

- `memla.explore.fact`: the fact the page edits (`Fact`), from a dataset record or typed rows, and its checks.
- `memla.explore.configs`: the methods' configs as one editable YAML mapping.
- `memla.explore.session`: `Explorer`, the model loaded once and the edits made on it (no UI library).
- `memla.explore.views`: the page's tables and charts as plain rows and PNG bytes.
- `memla.explore.command`: the ``memla edit`` command that reproduces an edit.
- `memla.explore.app`: the Gradio page (needs ``pip install 'memla[ui]'``).
"""

from memla.explore.fact import Fact, check_fact, fact_from_record, fact_from_rows
from memla.explore.session import Explorer, MethodRun, Settings, Update

__all__ = ["Explorer", "Fact", "MethodRun", "Settings", "Update", "check_fact", "fact_from_record", "fact_from_rows"]
