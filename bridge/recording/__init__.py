"""Call recordings: one two-channel WAV per call, the caller and the assistant as the caller
heard it, on the call's timeline (`tape`), written as the call runs (`wavfile`) to a directory
or an S3-compatible bucket (`store`)."""
