// Public surface of src/pipeline (filled in by its owner).
export {};
