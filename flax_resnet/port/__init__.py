"""Everything about porting from torch lives here: torchvision state dicts <-> models
(``state_dict``, numpy only), torch files and torchvision's downloads (``torch_files``), the
torchvision twin of a configuration (``twin``), the numerical verification against it
(``parity``), and the one conversion pipeline that the converter command and ``weights=``
both run (``pipeline``).

torch is imported inside the functions of ``torch_files`` and ``parity`` that need it, and
by ``twin`` (torch modules) on its own import; ``state_dict`` never imports it, so loading a
converted checkpoint needs no torch.
"""
