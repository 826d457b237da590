// Public surface of src/kmip (filled in by its owner).
export {};
