// A monthly Cost Management budget on the resource group this module is deployed to (main.bicep: the Batch
// account's), with two notifications: a forecast warning that only mails, and an actual-cost "kill" notification
// that also calls the kill-switch action group (alert_terminate opens an incident, docs/CONTRACT.md §9, §10).

@description('Budget name.')
param name string

@minValue(1)
@description('Monthly amount, in the billing currency.')
param amount int

@description('First day of the budget, yyyy-MM-01.')
param startDate string

@description('Percent of amount (actual cost) at which the kill switch is called.')
param killThreshold int

@description('Percent of amount (forecast cost) at which the contacts are mailed.')
param warningThreshold int

@description('E-mail addresses notified by both notifications.')
param contactEmails array = []

@description('Resource id of the kill-switch action group; empty: the kill notification only mails.')
param killSwitchActionGroupId string = ''

var killGroups = empty(killSwitchActionGroupId) ? [] : [killSwitchActionGroupId]

resource budget 'Microsoft.Consumption/budgets@2024-08-01' = {
  name: name
  properties: {
    category: 'Cost'
    amount: amount
    timeGrain: 'Monthly'
    timePeriod: {
      startDate: startDate
    }
    notifications: {
      kill: {
        enabled: true
        operator: 'GreaterThanOrEqualTo'
        threshold: killThreshold
        thresholdType: 'Actual'
        contactEmails: contactEmails
        contactGroups: killGroups
      }
      warning: {
        enabled: true
        operator: 'GreaterThanOrEqualTo'
        threshold: warningThreshold
        thresholdType: 'Forecasted'
        contactEmails: contactEmails
        contactGroups: []
      }
    }
  }
}

output id string = budget.id
