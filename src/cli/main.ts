// vmseal command line (placeholder until the CLI lands).
console.log('vmseal');
