// Public surface of src/keys (filled in by its owner).
export {};
