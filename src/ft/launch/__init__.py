"""The distributed side: DeepSpeed files and their checks, FSDP settings, the world size, the install checks
and the report of the backend accelerate really set up. The training code runs the same under `python`,
`accelerate launch` or `torchrun`; only this part reads the launcher's environment."""
