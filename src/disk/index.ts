// Public surface of src/disk (filled in by its owner).
export {};
