// Deployed at the scope of an EXISTING Batch account's resource group (see main.bicep): defines a custom role
// with exactly the Batch operations the app calls, grants it to the function app's identity on that one account,
// and reads the account's data plane endpoint for BATCH_ACCOUNT_URL.
//
// Why not a built-in role: "Azure Batch Job Submitter" has jobs/* and jobSchedules/* (create and delete too) but
// only pools/read, so it cannot scale a pool (KILL_SWITCH_SCALE_POOLS); "Azure Batch Data Contributor" can, but
// it also manages pools, applications and certificates at will. The custom role below has what each feature
// needs (docs/DEPLOY.md, "Permissions by feature"), and pools/write only while KILL_SWITCH_SCALE_POOLS is on.
// Names: Microsoft's "Azure Batch RBAC operations" list (batch-role-based-access-control, "Assign a custom
// role") and the Microsoft.Batch resource provider operations (jobs/*, jobSchedules/* are data actions;
// pools/* and batchAccounts/read are actions, which the Batch data plane checks for pool and node calls).

@description('Name of the existing Batch account (in this deployment\'s resource group).')
param batchAccountName string

@description('Principal (object) id of the function app\'s user-assigned managed identity.')
param principalId string

@description('KILL_SWITCH_SCALE_POOLS: also grant pools/write (Pool - Resize, Stop Resize, Enable/Disable Auto Scale).')
param scalePools bool = false

resource batchAccount 'Microsoft.Batch/batchAccounts@2024-07-01' existing = {
  name: batchAccountName
}

// Reads: Job - Get / List, Job - List Preparation and Release Task Status (jobs/read); Job Schedule - Get /
// List (jobSchedules/read); Pool - Get, Compute Node - List (pools/read); the account itself (batchAccounts/read,
// "for any read operation" in Microsoft's list).
var readActions = [
  'Microsoft.Batch/batchAccounts/read'
  'Microsoft.Batch/batchAccounts/pools/read'
]
// Pool - Resize, Pool - Stop Resize, Pool - Enable / Disable Auto Scale: the kill switch's pool scaling and its undo.
var poolWriteActions = [
  'Microsoft.Batch/batchAccounts/pools/write'
]
var dataActions = [
  'Microsoft.Batch/batchAccounts/jobs/read'
  // Job - Terminate (terminate_job, confirm_termination's forced terminate).
  'Microsoft.Batch/batchAccounts/jobs/write'
  'Microsoft.Batch/batchAccounts/jobSchedules/read'
  // Job Schedule - Disable / Enable (the kill switch and its undo).
  'Microsoft.Batch/batchAccounts/jobSchedules/write'
]

// One definition per account and identity; its actions follow scalePools (updated in place, same name).
resource terminatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(batchAccount.id, principalId, 'batch-terminator-role')
  properties: {
    roleName: 'batch-terminator (${batchAccountName}, ${uniqueString(batchAccount.id, principalId)})'
    description: 'What batch-terminator calls on Batch: read and terminate jobs, read and disable/enable job schedules, read pools and nodes; resize pools only when KILL_SWITCH_SCALE_POOLS is on.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: scalePools ? concat(readActions, poolWriteActions) : readActions
        notActions: []
        dataActions: dataActions
        notDataActions: []
      }
    ]
  }
}

resource terminatorAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(batchAccount.id, principalId, terminatorRole.id)
  scope: batchAccount
  properties: {
    roleDefinitionId: terminatorRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// e.g. "myaccount.westeurope.batch.azure.com" (no scheme).
output accountEndpoint string = batchAccount.properties.accountEndpoint
output batchAccountId string = batchAccount.id
output roleDefinitionId string = terminatorRole.id
