"""Any domain, no config: the data root records what was ingested into it, so `reindex --domain D`,
the nightly run and `status` know a domain no config names; `index` does ingest + reindex in one step."""

from __future__ import annotations

import json
import threading

import pytest
from typer.testing import CliRunner

from sidestep.cli import app
from sidestep.config import Settings, SourceConfig
from sidestep.storage.sources import SourceConflict, SourceRegistry, known_sources, sources_to_read

runner = CliRunner()

NOTES = [
    {"id": "n1", "title": "Sourdough starter", "text": "Feed the starter twice a day with equal weights of flour "
     "and water; it is ready when it doubles in four to six hours."},
    {"id": "n2", "title": "Bike chain care", "text": "Clean the chain with a degreaser, dry it, then apply one "
     "drop of lubricant per roller and wipe off the excess."},
    {"id": "n3", "title": "Houseplant watering", "text": "Most houseplants prefer the top two centimetres of soil "
     "to dry out before watering; overwatering rots the roots."},
    {"id": "", "title": "no id", "text": "this record has no id and goes to quarantine"},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _json(args):
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.integration
def test_ingest_reindex_search_on_a_domain_no_config_names(data_root, tmp_path):
    src = _write(tmp_path / "notes.jsonl", NOTES)
    ing = _json(["ingest", str(src), "--domain", "notes"])
    assert ing["new"] == 3 and ing["quarantined"] == 1
    first = _json(["reindex", "--domain", "notes"])
    assert first["encoded"] == 3 and [p["domain"] for p in first["published"]] == ["notes"]
    again = _json(["reindex", "--domain", "notes"])  # re-reads the recorded source: nothing changed
    assert again["encoded"] == 0 and again["published"] == []
    assert again["domains"]["notes"]["ingest"][0]["unchanged"] == 3
    hits = _json(["search", "how do I keep my bicycle chain running smoothly", "--domain", "notes"])
    assert hits["results"][0]["doc_id"] == "n2"
    st = _json(["status"])["domains"]["notes"]
    assert st["serving_version"] == first["published"][0]["version"] and st["sources"] == [str(src)]

    # `index`: one step; a second run of the same source publishes nothing
    more = _write(tmp_path / "more.jsonl", [{"id": "m1", "text": "Descale the kettle with diluted vinegar."}])
    idx = _json(["index", str(more), "--domain", "notes"])
    assert idx["quarantined"] == 0 and idx["encoded"] == 1 and idx["published"][0]["domain"] == "notes"
    assert idx["version"] == idx["published"][0]["version"]
    assert _json(["index", str(more), "--domain", "notes"])["published"] == []

    # a recorded source that is gone is skipped with its documents kept, not a failed domain
    more.unlink()
    kept = _json(["reindex", "--domain", "notes"])
    assert kept["failed"] == {} and kept["published"] == []
    assert _json(["status"])["domains"]["notes"]["documents"] == 4


def test_an_unknown_domain_is_a_clear_error_that_says_how_to_add_it(data_root):
    r = runner.invoke(app, ["reindex", "--domain", "nowhere", "--json"])
    assert r.exit_code != 0
    msg = json.loads(r.stdout.strip().splitlines()[-1])["error"]
    assert "nowhere" in msg and "sidestep index PATH --domain D" in msg


def test_a_config_adds_to_the_recorded_sources_and_a_conflict_is_a_clear_error(data_root, tmp_path):
    a, b = _write(tmp_path / "a.jsonl", NOTES[:1]), _write(tmp_path / "b.jsonl", NOTES[1:2])
    SourceRegistry(data_root).record(SourceConfig(domain="notes", path=str(a), format="jsonl"))
    # the config names another source of the same domain and one of its own: both add, nothing is replaced
    cfg = Settings(sources=[SourceConfig(domain="notes", path=str(b)), SourceConfig(domain="docs", path=str(b))])
    assert {(s.domain, s.path) for s in known_sources(cfg, data_root)} == {
        ("notes", str(b)), ("docs", str(b)), ("notes", str(a))}
    # the same path with its format left to detection is the same source, not a conflict
    same = Settings(sources=[SourceConfig(domain="notes", path=str(a))])
    assert len(known_sources(same, data_root)) == 1
    # the same path read another way is a conflict, named
    other = Settings(sources=[SourceConfig(domain="notes", path=str(a), id_field="key")])
    with pytest.raises(SourceConflict, match="id_field"):
        known_sources(other, data_root)
    # a recorded source whose file is gone is reported, a configured one is still read (and fails loudly)
    a.unlink()
    assert sources_to_read(Settings(), data_root, "notes") == ([], [str(a)])
    assert [s.path for s in sources_to_read(same, data_root, "notes")[0]] == [str(a)]


def test_concurrent_ingests_both_land_in_the_registry(data_root, tmp_path):
    reg = SourceRegistry(data_root)
    paths = [_write(tmp_path / f"s{i}.jsonl", NOTES[:1]) for i in range(8)]
    threads = [threading.Thread(target=reg.record, args=(SourceConfig(domain="notes", path=str(p)),))
               for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.path for s in reg.sources()) == sorted(map(str, paths))
