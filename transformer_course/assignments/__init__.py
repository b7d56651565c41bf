"""Teaching with the course (book/instructors.md): release student notebooks, grade a class in a sandbox.

    python -m transformer_course.assignments release --chapters 03,05 --out release/
    python -m transformer_course.assignments grade submissions/ --manifest release/manifest.json --out results/

`table` (points and requirements per exercise id), `cells` (reading cells with `ast`), `release`, `manifest`,
`submission` (the cells an exercise needs), `sandbox` (the child process and its limits), `grade`, `report`.
Leaves out: collecting submissions (use your LMS) and manual grading.
"""
