"""The application around the library: ``runs`` (run folders, resuming), ``builders`` (a run from its config),
``schema`` and ``validation`` (the checks a run's settings pass before any work), ``overrides`` (the closest key
to a misspelt override) and ``report``
(``python -m vaells.app.report FOLDER``: the tables and figures of a sweep)."""
