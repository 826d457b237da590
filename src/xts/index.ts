// Public surface of src/xts (filled in by its owner).
export {};
