"""The comparison harness behind ``cerebral-rnn reproduce``: corpus, arms, training, report.

It uses only the library's public API; nothing in the library imports it.
"""
