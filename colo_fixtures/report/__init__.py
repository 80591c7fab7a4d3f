"""What a run shows: Allure glue (steps from phases, attachments), metrics, plots, categories,
HTML, nightly.
"""
