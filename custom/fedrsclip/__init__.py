"""FedRSCLIP: federated dual-prompt learning of a frozen CLIP for remote-sensing scene classification.

Where to start (layers: core <- flare <- tools <- cli; a module imports only its own layer and the ones before):
    core    config.load_config (the one schema), algorithms (what each algorithm trains and sends),
            trainer (the method in one file: scores, loss, local training), prompts / ot / losses (its parts),
            site (a site's round, both runners), factory.make_site, protocol (what crosses the wire),
            privacy (the allow-list, DP), inprocess.run_inprocess (every site in one process), results_file
    flare   the FLARE components and the job built from them (flare/__init__.py walks through one round)
    tools   the demo, experiment grids and reports, the benchmark
    cli     `fedrsclip <command>`

Importing the package imports nothing heavy: the FLARE server loads its components without torch.
"""

__version__ = "0.1.0"
