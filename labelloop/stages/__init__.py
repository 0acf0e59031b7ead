"""One module per stage of the loop, named like its params.yaml section, task module, flow and CLI command."""
