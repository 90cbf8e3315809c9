"""One module per subcommand (``add_arguments`` + ``run``); the options several share are in
:mod:`cityseg.commands.shared_options`."""
