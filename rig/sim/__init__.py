"""The simulated lab: a physical bench model, simulated instruments, device
twins and the HAN medium, all behind the same interfaces as real hardware."""
