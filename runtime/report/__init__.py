"""The run report (`modelspec report`): `collect.py` reads the store for one plan, `svg.py` draws
the charts, `page.py` builds the sections and renders `template.py` in a jinja2 sandbox."""
