"""evaluator: GeneCIS scoring as a Ray job (``python -m evaluator genecis ...``; see ARCHITECTURE.md).

Ray-free core: ``genecis_data`` (annotation files and the §4.2 image rule), ``plan`` (every distinct
image/crop and text once), ``encode`` (model loading, fingerprints, image reading, raw features),
``cache`` (embedding cache in object storage), ``scoring`` + ``metrics`` (pessimistic R@k through
``trainer.model.combine``), ``protocol`` (tasks, bad input, results.json), ``report`` and ``plots``.
Ray launcher: ``genecis`` (a Ray Data ``map_batches`` encode stage with model-loading actors).
"""
