"""FedRSCLIP on NVIDIA FLARE: the components a job names, and the job built from them (job.py, FLARE's job API).
Importing this package does not import FLARE; its modules do. It imports the core, never `fedrsclip.tools`.

One round of the job (plaintext; [HE] marks the CKKS variant), numbered as FLARE's hello-pt client:

    server  (1) ScatterAndGather sends the global model as a WEIGHTS task: empty in round 1 (the server never
                builds CLIP; every site draws the same initial shared prompt from train.seed), else the shared prompt
                the PromptPersistor (persistor.py) holds.                   [HE] the ciphertext sum instead
    site    (2) [HE] CKKSDecryptor (he/filters.py) turns the encrypted sum into the sample-weighted mean.
            (3) FedRSCLIPExecutor (executor.py) builds its Site once per process (factory.make_site: data, cached
                image features, trainer, local state) and runs Site.run_round: evaluate the received model with
                the site's private prompt, train the local epochs, DP (opt-in), then privacy.check_outgoing, the
                allow-list of the payload and of its protocol.RoundRecord; the local state is saved.
            (4) [HE] CKKSEncryptor encrypts n_k x the update, last, and sets the record's bytes_up.
    server  (5) ResultsCollector (results.py) files the record (fedrsclip_results.json, results_file.ResultsBook).
            (6) ValidatingAggregator (aggregator.py) holds the round's updates, refuses bad ones (protocol.check_update,
                protocol.Gate: shapes, finite values, weight, class list) and averages the rest (protocol.weighted_mean,
                eq. 6).                                                    [HE] CKKSAggregator adds ciphertexts
            (7) IntimeModelSelector and PromptPersistor keep the best and the latest global model (model_file.py).
            (8) After the last round GlobalModelEval sends the final model (locator.py) as a validate task; each site
                evaluates it and keeps it with its private prompt; the collector writes the final results.

Shared names are in constants.py, so the server imports neither the sites' executor nor torch.
"""
