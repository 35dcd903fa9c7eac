#!/usr/bin/env python3
"""The project's documentation is self-contained (issue 14): every "SQUAT.md §N" the sources
cite names a section of docs/SQUAT.md, README.md and docs/*.md point to no document outside the
repository, and every relative link in them leads to a file in the repository.

  test_docs.py REPO_ROOT
"""
import pathlib, re, sys

def main():
    root = pathlib.Path(sys.argv[1]).resolve()
    spec = root / "docs" / "SQUAT.md"
    problems = []
    if not spec.is_file():
        sys.exit("docs/SQUAT.md is missing: the sources cite it")
    sections = set(re.findall(r"^## (\d+)\.", spec.read_text(), re.M))
    cited = 0
    for folder in ("src", "tests", "bench", "python", "scripts", "docs"):
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file() or path.suffix not in (".cpp", ".h", ".py", ".md", ""):
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for m in re.finditer(r"SQUAT\.md`?\s*§\s*(\d+)", text):
                cited += 1
                if m.group(1) not in sections:
                    problems.append(f"{path.relative_to(root)} cites SQUAT.md §{m.group(1)}, "
                                    f"which docs/SQUAT.md does not have (sections {sorted(sections)})")
    if cited == 0:
        problems.append("no source cites SQUAT.md §N: the pattern of this test is out of date")
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in re.finditer(r"\.\./[^\s`)'\"]*\.md", text):
            problems.append(f"{doc.relative_to(root)} points outside the repository for "
                            f"documentation: {m.group(0)}")
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1).split("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue  # an anchor, or a web address
            resolved = (doc.parent / target).resolve()
            if root not in resolved.parents or not resolved.exists():
                problems.append(f"{doc.relative_to(root)} links {target}, which is not a file "
                                f"of the repository")
    for p in problems:
        print(p)
    print(f"{cited} citations of SQUAT.md checked; {len(problems)} problems")
    sys.exit(1 if problems else 0)

if __name__ == "__main__":
    main()
