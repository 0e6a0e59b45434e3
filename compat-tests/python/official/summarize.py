"""Counts one pytest JUnit report by variant (tests/_sync, tests/_async, the rest) and lists
each failure with the first line of its message.   python summarize.py PACKAGE FILE.xml"""

import sys
import xml.etree.ElementTree as ET


def variant(case) -> str:
    where = (case.get("classname") or "") + " " + (case.get("file") or "")
    if "_sync" in where:
        return "sync"
    if "_async" in where:
        return "async"
    return "other"


def main() -> None:
    pkg, path = sys.argv[1], sys.argv[2]
    counts = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        v = variant(case)
        c = counts.setdefault(v, {"passed": 0, "failed": 0, "skipped": 0})
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            c["failed"] += 1
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            print(f"#   FAIL {case.get('classname')}::{case.get('name')} :: {msg[0][:200] if msg else ''}")
        elif case.find("skipped") is not None:
            c["skipped"] += 1
        else:
            c["passed"] += 1
    for v in ("sync", "async", "other"):
        if v in counts:
            c = counts[v]
            print(f"== {pkg} {v} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")


if __name__ == "__main__":
    main()
