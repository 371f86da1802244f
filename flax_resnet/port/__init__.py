"""Everything about porting from torch lives here: torchvision state dicts <-> models
(``state_dict``, numpy only), torch files and torchvision's downloads (``torch_files``), the
torchvision twin of a configuration (``twin``), the numerical verification against it
(``parity``), and the one conversion pipeline that the converter command and ``weights=``
both run (``pipeline``).

Only ``torch_files``, ``twin``, ``parity`` and ``pipeline`` need torch, each inside its
functions or on import of that module alone; ``state_dict`` never imports it.
"""
