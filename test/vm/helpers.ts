// Shared fixtures of the VM tests.

/** A descriptor as VMware writes an encrypted disk's: its KeySafe and encrypted data, no encryption.format. */
export const VMWARE_ENCRYPTED_DESCRIPTOR = [
  '# Disk DescriptorFile',
  'version=1',
  'encoding="UTF-8"',
  'CID=fffffffe',
  'parentCID=ffffffff',
  'createType="monolithicSparse"',
  'encryption.keySafe = "vmware:key/list/(pair/(null/%3cVMWARE%2dEMPTYSTRING%3e,HMAC%2dSHA%2d1,' + 'A'.repeat(92) + '))"',
  'encryption.data = "' + 'B'.repeat(128) + '"',
  '',
].join('\n');
