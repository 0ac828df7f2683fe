"""The example workflows as Python descriptions and the writer of their UI-format JSON.

``names``: the files the workflows name (models from :mod:`fdi.sources`), the notes' text, colours;
``schema``: reading ``/object_info``; ``graph``: the description language and :func:`graph.build`;
``blocks``: pieces several workflows share; ``restore``, ``style``, ``train``, ``sdxl``: the workflows by
family; ``catalog``: the list of them. ``workflows/build_workflows.py`` is the command.
"""
