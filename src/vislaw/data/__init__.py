"""Data: the procedurally generated mini-world, your own data, and the SPair-71k-format reader.

- ``world``: ``make_world(outdir, params)`` writes captions, QA benchmarks, a corpus and SPair-format pairs.
- ``prepare``: ``prepare_data(outdir, data)`` writes the same layout from real files (SPair-71k, LLaVA-format
  captions and conversations, multiple-choice benchmarks), linking rather than copying them.
- ``spair``: ``load_pairs(root, split)`` and ``split_images(root, split)`` read the real SPair-71k and the
  mini-world's copy through one code path.
- ``shapes``, ``scene``, ``render``, ``text``: the world's categories, scene specs, rasteriser and language.

Formats: ``README.md`` in this folder.
"""
