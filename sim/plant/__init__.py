"""The simulated plant: the house, the Venus E batteries and their firmware, the meters."""
