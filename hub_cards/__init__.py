"""Model card templates (Jinja) of mme-jd, shipped in the wheel as `mme_jd.hub_cards`.

pyproject.toml maps this folder to `mme_jd.hub_cards` (as it maps modeling/ to
`mme_jd.modeling`), so an editable install reads these very files: one source.
"""
