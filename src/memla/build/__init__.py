"""Dataset construction: Wikidata facts -> LLM samples -> validation -> translation (MKEB §3.1, Appendix A).

Public API::

    from memla.build import BuildConfig, build_dataset, open_endpoint, ChatClient, LLMTranslator
    endpoint = open_endpoint(None, cache_dir="data.build/sparql")        # public Wikidata
    client = ChatClient("http://127.0.0.1:8000/v1", "qwen2.5-7b-instruct")
    report = build_dataset(BuildConfig(relations=("P36", "P37"), n=100), endpoint=endpoint,
                           client=client, translator=LLMTranslator(client),
                           work_dir="data.build", out="data.json")

Modules: `facts` (SPARQL queries), `sparql` (endpoints and query cache), `http`
(polite HTTP with retries), `plan` (edit cases), `generate` (chat client and
Appendix A prompts), `validate` (guideline checks, regeneration loop),
`translate` (LLM and Baidu translators, translation memory), `hf` (local Hugging
Face translation models), `localize` (Wikidata
labels for names, record assembly), `cache` (stage caches), `report`,
`pipeline` (the stages in order).
"""

from memla.build.errors import BuildError, ServiceError
from memla.build.facts import Chain, Fact, extract_chains, extract_facts, fetch_labels
from memla.build.generate import ChatClient, GeneratedSample
from memla.build.hf import HFTranslator
from memla.build.http import PoliteSession, RequestStats
from memla.build.pipeline import DEFAULT_HOP_RELATIONS, BuildConfig, build_dataset
from memla.build.plan import Case
from memla.build.report import BuildReport
from memla.build.sparql import WIKIDATA_ENDPOINT, CachedEndpoint, HttpSparqlEndpoint, OxigraphEndpoint, open_endpoint
from memla.build.translate import BaiduTranslator, CachedTranslator, LLMTranslator, Translator
from memla.build.validate import Issue, check_sample, generate_valid_sample

__all__ = [
    "DEFAULT_HOP_RELATIONS",
    "WIKIDATA_ENDPOINT",
    "BaiduTranslator",
    "BuildConfig",
    "BuildError",
    "BuildReport",
    "CachedEndpoint",
    "CachedTranslator",
    "Case",
    "Chain",
    "ChatClient",
    "Fact",
    "GeneratedSample",
    "HFTranslator",
    "HttpSparqlEndpoint",
    "Issue",
    "LLMTranslator",
    "OxigraphEndpoint",
    "PoliteSession",
    "RequestStats",
    "ServiceError",
    "Translator",
    "build_dataset",
    "check_sample",
    "extract_chains",
    "extract_facts",
    "fetch_labels",
    "generate_valid_sample",
    "open_endpoint",
]
