"""Many simulations answering one question: SD sweeps, validation against hardware, capacity planning."""
