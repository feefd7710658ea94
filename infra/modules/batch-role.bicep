// Deployed at the scope of the EXISTING Batch account's resource group (see main.bicep): grants the
// function app's identity "Azure Batch Job Submitter" on that one account, and reads the account's data
// plane endpoint for BATCH_ACCOUNT_URL. Job Submitter's data actions are batchAccounts/jobs/* and
// batchAccounts/jobSchedules/* (covers Job - Terminate, and listing jobs for a sweep); it cannot touch pools,
// certificates, keys or the account itself.

@description('Name of the existing Batch account (in this deployment\'s resource group).')
param batchAccountName string

@description('Principal (object) id of the function app\'s user-assigned managed identity.')
param principalId string

// Built-in role: Azure Batch Job Submitter.
var batchJobSubmitterRoleId = '48e5e92e-a480-4e71-aa9c-2778f4c13781'

resource batchAccount 'Microsoft.Batch/batchAccounts@2024-07-01' existing = {
  name: batchAccountName
}

resource jobSubmitter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(batchAccount.id, principalId, batchJobSubmitterRoleId)
  scope: batchAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', batchJobSubmitterRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// e.g. "myaccount.westeurope.batch.azure.com" (no scheme).
output accountEndpoint string = batchAccount.properties.accountEndpoint
output batchAccountId string = batchAccount.id
