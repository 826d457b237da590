// Public surface of src/vmdk (filled in by its owner).
export {};
