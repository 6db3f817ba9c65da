import csv

from contsup.tables import markdown_table, text_table, write_csv


def test_write_csv_takes_every_key_in_order_and_rounds(tmp_path):
    path = write_csv([{"a": 1.23456789, "b": "x"}, {"a": 2.0, "c": 3}], tmp_path / "sub" / "t.csv", digits=3)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["a", "b", "c"]
    assert rows[0]["a"] == "1.235" and rows[1]["c"] == "3" and rows[1]["b"] == ""


def test_tables():
    assert markdown_table(["K", "err"], [[1, "2.0"]]) == "| K | err |\n|---|---|\n| 1 | 2.0 |"
    assert text_table(["K", "err"], [["16", "2.0"]]).splitlines() == [" K  err", "16  2.0"]
