"""The paper's experiment and its report (what `reproduce.py` runs).

paper.py     the runs of an experiment: the paper's V1/V2 x patient/random-patch split, the
             other networks, seeds, the best recipe and its ablations; their configs
tables.py    the rows of report.md's tables, from the runs' summaries
report.py    report.md: the sections, in the order a reader of the paper expects them
figures.py   the paper's figures 2 and 3, reliability diagram, per-patient spread
markdown.py  table cells and Markdown tables (also used by the benchmarks)
paired.py    paired bootstrap over patients of B - A, thresholds re-chosen in each resample
slide_agreement.py, lesions.py   called against labelled IDC area per slide; lesions by size
held_out.py, held_out_tables.py  their report on finished runs (study.py --cv/--patient_split)
"""
