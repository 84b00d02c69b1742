"""What the test files share: the exact Gaussian model, the tiny trained and exported runs, networks pushed to
trained activation ranges, the DDP worker that test_ddp runs under torchrun, and benchmarks/ scripts
imported as modules."""
